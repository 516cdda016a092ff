//! kms-sim's pre-encoded media (`--pre-encoded`, for benchmarks of many publishers): every codec
//! the daemon taps decodes at the stream's rate from replayed clips, audio too, and a keyframe
//! request restarts a clip (a tap attached mid-clip decodes at once). In a process of its own: the
//! switch is process-wide.

use std::time::Duration;

use tap_test_support::prelude::*;

const ROOM: &str = "[[room]]\nname='replay'\n\
[[room.participant]]\nname='vp8'\nvideo={codec='VP8', width=320, height=240, fps=15}\naudio={tone=300.0}\n\
[[room.participant]]\nname='h264'\nvideo={codec='H264', width=320, height=240, fps=15}\naudio={tone=400.0}\n\
[[room.participant]]\nname='twin'\nvideo={codec='VP8', width=320, height=240, fps=15}\naudio={tone=300.0}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_clips_decode_at_the_streams_rate() {
    decode_at_the_streams_rate(None, (43400, 43500)).await;
}

/// The same with every tap received and decoded on one shared thread (`receive_threads = 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_clips_decode_at_the_streams_rate_on_one_shared_thread() {
    decode_at_the_streams_rate(Some(1), (44400, 44500)).await;
}

async fn decode_at_the_streams_rate(receive_threads: Option<usize>, (sim, taps): (u16, u16)) {
    kms_sim::replay::set_pre_encoded(true);
    let h = Harness::new()
        .scenario(ROOM)
        .sim_ports(sim..=sim + 99)
        .tap_ports(taps..=taps + 99)
        .configure(move |c| c.receive_threads = receive_threads)
        .start()
        .await;
    h.wait_taps(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = h.daemon.status().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = h.daemon.status().await;
    for (b, a) in before.iter().zip(&after) {
        let fps = (a.video_frames - b.video_frames) as f64 / 5.0;
        let audio = (a.audio_buffers - b.audio_buffers) as f64 / 5.0;
        eprintln!(
            "{}: {fps:.1} fps decoded, {audio:.1} audio buffers/s",
            a.participant
        );
        assert!(
            (13.0..=17.0).contains(&fps),
            "{}: {fps} fps from a 15 fps clip",
            a.participant
        );
        assert!(
            audio >= 20.0,
            "{}: audio decoded ({audio}/s)",
            a.participant
        );
    }
    let m = h.metrics().await;
    assert!(
        m.contains("kurento_tap_decode_errors_total 0"),
        "replays decode cleanly (a loop back to the keyframe included):\n{m}"
    );
    h.stop().await;
}

/// A group call of nine: nine publishers and 72 subscriber endpoints, every one examined. At most
/// `MAX_SETUPS_IN_FLIGHT` (64) setups run at once, the rest wait their turn, and every publisher
/// is tapped in the end (unbounded, n participants meant n² setups at once: 10,000 at 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_room_is_set_up_at_most_64_at_a_time() {
    kms_sim::replay::set_pre_encoded(true);
    let mut room = String::from("[[room]]\nname='group'\n");
    for i in 0..9 {
        room.push_str(&format!(
            "[[room.participant]]\nname='p{i}'\nvideo={{codec='VP8', width=160, height=120, fps=15}}\naudio={{tone={}}}\n",
            300 + 10 * i
        ));
    }
    let h = Harness::new()
        .scenario(&room)
        .sim_ports(45600..=45799)
        .tap_ports(45800..=45899)
        .start()
        .await;
    let taps = h.wait_taps(9).await;
    assert_eq!(taps.len(), 9);
    let gauge = |m: &str, name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let m = h.metrics().await;
    let peak = gauge(&m, "kurento_tap_tap_setups_peak ");
    assert_eq!(
        peak, 64.0,
        "81 endpoints found at once: the bound is reached and held"
    );
    for _ in 0..50 {
        if gauge(&h.metrics().await, "kurento_tap_tap_setups_queued ") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gauge(&h.metrics().await, "kurento_tap_tap_setups_queued "),
        0.0
    );
    h.stop().await;
}
