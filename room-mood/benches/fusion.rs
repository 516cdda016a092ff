//! Fused results per second on one core, and the time one result adds (p50/p99), for a room of
//! participants each sending face results at 5/s and voice results at 2/s; plus the once-a-second
//! tick (every state and the room mood) for rooms of growing size.
//!
//! `cargo bench -p room-mood --bench fusion`

use std::time::Instant;

use room_mood::{MoodConfig, MoodEngine};
use tap_protocol::affect::{fer2013_declaration, voice_arousal_declaration};
use tap_protocol::{MediaKind, ResultMessage, WorkerReply};

/// One synthetic result: model, media, label scores.
type Synthetic = (&'static str, MediaKind, Vec<(String, f64)>);

fn results(rooms: usize, per_room: usize, seconds: usize) -> Vec<ResultMessage> {
    let t0 = 1_800_000_000_000.0;
    let fer = [
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
    ];
    let mut out = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 1000) as f64 / 1000.0
    };
    for tick in 0..seconds * 10 {
        let at = t0 + tick as f64 * 100.0;
        for r in 0..rooms {
            for p in 0..per_room {
                let mut kinds: Vec<Synthetic> = Vec::new();
                if tick % 2 == 0 {
                    let mut s: Vec<f64> = fer.iter().map(|_| next()).collect();
                    let sum: f64 = s.iter().sum();
                    s.iter_mut().for_each(|x| *x /= sum);
                    let labels = fer.iter().map(|l| l.to_string()).zip(s).collect();
                    kinds.push(("fer", MediaKind::Video, labels));
                }
                if tick % 5 == 1 {
                    let a = next();
                    let labels = vec![
                        ("speech".into(), next()),
                        ("calm".into(), 1.0 - a),
                        ("aroused".into(), a),
                    ];
                    kinds.push(("voice", MediaKind::Audio, labels));
                }
                for (model, media, labels) in kinds {
                    out.push(ResultMessage {
                        v: 1,
                        room: format!("room-{r}"),
                        participant: format!("p-{p}"),
                        endpoint: String::new(),
                        kms: None,
                        model: model.into(),
                        version: "1".into(),
                        media,
                        seq: tick as u64,
                        capture_ms: at,
                        output: WorkerReply {
                            labels: labels.into_iter().collect(),
                            top: None,
                            extras: serde_json::json!({"attentive": true}),
                            queue_ms: 0.0,
                            inference_ms: 0.0,
                        },
                        latency_ms: 0.0,
                        round_trip_ms: 0.0,
                    });
                }
            }
        }
    }
    out
}

fn engine() -> MoodEngine {
    let mut e = MoodEngine::new(MoodConfig::default());
    e.declare("fer", "1", fer2013_declaration());
    e.declare("voice", "1", voice_arousal_declaration());
    e
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"fusion".contains(a.as_str()))
    {
        return;
    }
    println!("| workload | results | fused results/s (one core) | per result p50 / p99 |");
    println!("|---|---|---|---|");
    for (rooms, per_room) in [(1, 10), (10, 10), (100, 10), (10, 100)] {
        let input = results(rooms, per_room, 60);
        // Throughput: the whole stream, timed as one.
        let mut e = engine();
        let start = Instant::now();
        for r in &input {
            std::hint::black_box(e.observe(r));
        }
        let rate = input.len() as f64 / start.elapsed().as_secs_f64();
        // Latency one result adds: each observe timed alone.
        let mut e = engine();
        let mut each: Vec<f64> = input
            .iter()
            .map(|r| {
                let t = Instant::now();
                std::hint::black_box(e.observe(r));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        println!(
            "| {rooms} rooms × {per_room} participants, 60 s | {} | {:.0} | {:.2} / {:.2} µs |",
            input.len(),
            rate,
            percentile(&mut each, 0.5),
            percentile(&mut each, 0.99)
        );
    }
    println!();
    println!("| tick (every state + room moods) | time per tick p50 / p99 |");
    println!("|---|---|");
    for (rooms, per_room) in [(1, 10), (10, 10), (100, 10)] {
        let input = results(rooms, per_room, 20);
        let mut e = engine();
        for r in &input {
            e.observe(r);
        }
        let now = input.last().map(|r| r.capture_ms).unwrap_or(0.0);
        let mut times: Vec<f64> = (0..200)
            .map(|i| {
                let t = Instant::now();
                std::hint::black_box(e.tick(now + i as f64 * 10.0));
                std::hint::black_box(e.states(now + i as f64 * 10.0));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        println!(
            "| {rooms} rooms × {per_room} participants | {:.1} / {:.1} µs |",
            percentile(&mut times, 0.5),
            percentile(&mut times, 0.99)
        );
    }
}
