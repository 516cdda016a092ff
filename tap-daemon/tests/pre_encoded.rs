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
