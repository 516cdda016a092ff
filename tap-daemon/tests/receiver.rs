//! The GStreamer receiver and the chunker on real RTP from the simulator.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kms_sim::{Scenario, SimOptions, SimServer};
use kurento_client::prelude::*;
use tap_daemon::media::chunker::{Chunk, ChunkSink, Chunker};
use tap_daemon::media::ports::PortPool;
use tap_daemon::media::receiver::{MediaPorts, ReceiveThreads, Receiver, ReceiverConfig};
use tap_daemon::media::sdp_offer::{check_answer, publisher_media, tap_offer, OPUS_PT, VIDEO_PT};
use tap_protocol::*;

#[derive(Default)]
struct Collect(Mutex<Vec<(ModelId, u64, usize)>>);

impl ChunkSink for Collect {
    fn offer(&self, c: Chunk) {
        self.0
            .lock()
            .unwrap()
            .push((c.spec.id.clone(), c.capture_us, c.payload.len()));
    }
}

fn video_spec(name: &str, v: VideoChunkSpec) -> Arc<ModelSpec> {
    Arc::new(ModelSpec {
        protocol: 1,
        id: ModelId::new(name, "1"),
        media: MediaKind::Video,
        video: Some(v),
        audio: None,
        labels: vec![],
        output: "labels".into(),
        max_in_flight: 1,
        deadline_ms: 1000,
        heartbeat_ms: 1000,
        updated_ms: 0,
        affect: None,
        quality: None,
        outputs: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_media_is_cut_per_spec() {
    cut_per_spec(ReceiveThreads::PerTap, (52000, 52999), 53000).await;
}

/// The same on threads shared by every tap (threadshare; no rtpbin): the same chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_media_is_cut_per_spec_on_shared_threads() {
    cut_per_spec(
        ReceiveThreads::Shared("test-rx".into()),
        (50000, 50999),
        51000,
    )
    .await;
}

async fn cut_per_spec(threads: ReceiveThreads, sim_ports: (u16, u16), tap_ports: u16) {
    let scenario = Scenario::parse("[[room]]\nname='r'\n[[room.participant]]\nname='p'\nvideo={codec='VP8', width=320, height=240, fps=15}\naudio={tone=440.0}\n").unwrap();
    let sim = SimServer::start(SimOptions {
        scenario,
        announce_ip: Some([127, 0, 0, 1].into()),
        port_range: sim_ports,
        ..Default::default()
    })
    .await
    .unwrap();
    let kms = KurentoClient::connect(sim.url()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let room = kms
        .server_manager()
        .get_pipelines()
        .await
        .unwrap()
        .remove(0);
    let mut publisher = None;
    for c in room.get_children().await.unwrap() {
        let ep = c.downcast::<WebRtcEndpoint>().unwrap();
        let local = ep.get_local_session_descriptor().await.unwrap();
        let remote = ep.get_remote_session_descriptor().await.unwrap();
        let media = publisher_media(&local, Some(&remote)).unwrap();
        if media.sendonly {
            publisher = Some((ep, media));
        }
    }
    let (publisher, media) = publisher.unwrap();
    let codec = media.video.clone().unwrap();

    let specs = vec![
        video_spec(
            "rgb",
            VideoChunkSpec {
                fps: Some(5.0),
                every_nth: None,
                width: 160,
                height: 120,
                format: PixelFormat::Rgb24,
            },
        ),
        video_spec(
            "gray",
            VideoChunkSpec {
                fps: None,
                every_nth: Some(3),
                width: 64,
                height: 64,
                format: PixelFormat::Gray8,
            },
        ),
        Arc::new(ModelSpec {
            protocol: 1,
            id: ModelId::new("voice", "1"),
            media: MediaKind::Audio,
            video: None,
            audio: Some(AudioChunkSpec {
                window_ms: 500,
                hop_ms: 250,
                sample_rate: 16000,
                channels: 1,
                format: SampleFormat::F32,
            }),
            labels: vec![],
            output: "labels".into(),
            max_in_flight: 1,
            deadline_ms: 1000,
            heartbeat_ms: 1000,
            updated_ms: 0,
            affect: None,
            quality: None,
            outputs: None,
        }),
    ];
    let live = Arc::new(RwLock::new(Arc::new(specs)));
    let collect = Arc::new(Collect::default());
    let chunker = Arc::new(Chunker::new(live, collect.clone(), Arc::default()));
    let pool = PortPool::new([127, 0, 0, 1].into(), tap_ports, tap_ports + 999);
    let (a, v) = (pool.take().unwrap(), pool.take().unwrap());
    let receiver = Receiver::start(
        &ReceiverConfig {
            bind_ip: [127, 0, 0, 1].into(),
            audio: Some(MediaPorts {
                rtp_port: a.rtp,
                payload_type: OPUS_PT,
            }),
            video: Some((
                MediaPorts {
                    rtp_port: v.rtp,
                    payload_type: VIDEO_PT,
                },
                codec.clone(),
            )),
            latency_ms: 50,
            video_latency_ms: 50,
            srtp: None,
            threads,
        },
        chunker,
    )
    .unwrap();
    let offer = tap_offer([127, 0, 0, 1].into(), Some(a.rtp), Some((v.rtp, &codec)));
    let mut tx = kms.transaction();
    let tap = tx.create(RtpEndpoint::builder(&room)).unwrap();
    let answer = tx.on(&tap).process_offer(&offer);
    tx.on(&publisher).connect(&tap, MediaType::Audio);
    tx.on(&publisher).connect(&tap, MediaType::Video);
    let results = tx.commit().await.unwrap();
    results.check().unwrap();
    let answer = results.get(answer).unwrap();
    let ports = check_answer(&answer, true, true).unwrap();
    receiver.set_kms_rtcp(false, ports.audio_rtcp.unwrap());
    receiver.set_kms_rtcp(true, ports.video_rtcp.unwrap());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let chunks = collect.0.lock().unwrap().clone();
    let count = |n: &str| chunks.iter().filter(|c| c.0.name == n).count();
    let frames = receiver
        .stats
        .video_frames
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(frames >= 30, "decoded {frames} frames in 3 s at 15 fps");
    assert!(
        (10..=16).contains(&count("rgb")),
        "rgb at 5 fps: {}",
        count("rgb")
    );
    assert!(
        count("gray") as u64 >= frames / 3 - 1 && count("gray") as u64 <= frames / 3 + 1,
        "every 3rd of {frames}: {}",
        count("gray")
    );
    assert!(chunks
        .iter()
        .filter(|c| c.0.name == "rgb")
        .all(|c| c.2 == 160 * 120 * 3));
    assert!(chunks
        .iter()
        .filter(|c| c.0.name == "gray")
        .all(|c| c.2 == 64 * 64));
    assert!(
        count("voice") >= 7,
        "0.5 s windows every 0.25 s: {}",
        count("voice")
    );
    assert!(chunks
        .iter()
        .filter(|c| c.0.name == "voice")
        .all(|c| c.2 == 8000 * 4));
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    for name in ["rgb", "gray", "voice"] {
        let ts: Vec<u64> = chunks
            .iter()
            .filter(|c| c.0.name == name)
            .map(|c| c.1)
            .collect();
        assert!(
            ts.windows(2).all(|w| w[0] <= w[1]),
            "{name} capture times are monotonic"
        );
        assert!(
            ts.iter().all(|t| *t <= now_us && now_us - *t < 10_000_000),
            "{name} capture times are recent"
        );
    }
    eprintln!(
        "ntp timestamps: {}",
        receiver
            .stats
            .ntp_timestamps
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    drop(receiver);
}
