//! SRTP taps on the simulator (which keys and encrypts as KMS's RtpEndpoint does): media decrypts
//! and decodes, our SRTCP is accepted (a keyframe withheld until a PLI arrives is released), the
//! answer carries KMS's key, and forged packets are refused and counted without disturbing the tap.

use std::time::Duration;

use kurento_client::SdpEndpointMethods as _;
use tap_daemon::media::srtp::{Suite, TapCrypto};
use tap_daemon::Daemon;
use tap_test_support::prelude::*;

const ONE: &str = "[[room]]\nname='vault'\n[[room.participant]]\nname='eve'\nvideo={codec='VP8', withhold_keyframe=true, keyframe_interval=3000}\naudio={tone=330.0}\n";

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_frames(daemon: &Daemon, at_least: u64) -> u64 {
    let mut frames = 0;
    for _ in 0..80 {
        frames = daemon
            .status()
            .await
            .first()
            .map(|t| t.video_frames)
            .unwrap_or(0);
        if frames >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_taps_decrypt_and_refuse_forged_packets() {
    for suite in [Suite::Aes128Sha80, Suite::Aes256Sha32] {
        let h = Harness::new()
            .scenario(ONE)
            .sim_ports(43000..=43099)
            .tap_ports(43100..=43199)
            .configure(move |c| {
                c.tap_crypto = TapCrypto::Sdes;
                c.srtp_suite = suite;
            })
            .start()
            .await;
        let taps = h.wait_taps(1).await;
        assert_eq!(taps[0].media, ["audio", "video:VP8"]);

        // The simulator sends delta frames only until a PLI reaches it: frames decoding means its
        // srtpdec authenticated our SRTCP, and ours decrypted its SRTP.
        let frames = wait_frames(&h.daemon, 10).await;
        assert!(frames >= 10, "{suite}: {frames} frames decoded over SRTP");
        let audio = h.daemon.status().await[0].audio_buffers;
        assert!(audio > 0, "{suite}: audio decrypted and decoded");

        // KMS's answer (as the simulator gives it) is SAVPF with its key.
        let kms = kurento_client::KurentoClient::connect(&h.sim.url())
            .await
            .unwrap();
        let tap: kurento_client::RtpEndpoint = kms.object(&taps[0].tap).unwrap();
        let local = tap.get_local_session_descriptor().await.unwrap();
        assert_eq!(local.matches("RTP/SAVPF").count(), 2, "{local}");
        assert_eq!(
            local
                .matches(&format!("a=crypto:1 {} inline:", suite.sdp_name()))
                .count(),
            2,
            "{local}"
        );

        // Forged packets (an RTP header, random bytes where payload and tag go) to the tap's
        // ports: refused by authentication, counted, and decoding goes on.
        let before = h.metrics().await;
        let rejected_before = metric(&before, "kurento_tap_srtp_packets_rejected_total");
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rng = fastrand::Rng::with_seed(11);
        for seq in 0..100u16 {
            let mut pkt = vec![0x80, 96, (seq >> 8) as u8, seq as u8];
            pkt.extend((0..8).map(|_| rng.u8(..)));
            pkt.extend((0..200).map(|_| rng.u8(..)));
            for port in [43100u16, 43102] {
                let _ = sock.send_to(&pkt, ("127.0.0.1", port));
            }
        }
        let frames_then = h.daemon.status().await[0].video_frames;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = h.metrics().await;
        let rejected = metric(&after, "kurento_tap_srtp_packets_rejected_total") - rejected_before;
        assert!(
            rejected >= 190.0,
            "{suite}: {rejected} of 200 forged packets counted as refused\n{after}"
        );
        let frames_now = h.daemon.status().await[0].video_frames;
        assert!(
            frames_now > frames_then + 10,
            "{suite}: decoding went on ({frames_then} → {frames_now})"
        );
        assert!(
            after.contains("kurento_tap_taps_started_by_crypto_total{crypto=\"srtp\"} 1"),
            "{after}"
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_keeps_plain_rtp_when_kms_is_in_this_namespace() {
    let staged = Harness::new()
        .scenario(ONE)
        .sim_ports(43200..=43299)
        .tap_ports(43300..=43399)
        .start_sim()
        .await;
    assert_eq!(
        staged.config.tap_crypto,
        TapCrypto::Auto,
        "auto is the default"
    );
    let h = staged.start_daemon().await;
    h.wait_taps(1).await;
    assert!(wait_frames(&h.daemon, 5).await >= 5);
    let m = h.metrics().await;
    assert!(
        m.contains("kurento_tap_taps_started_by_crypto_total{crypto=\"rtp\"} 1"),
        "the simulator on 127.0.0.1 is in this namespace: {m}"
    );
    h.stop().await;
}
