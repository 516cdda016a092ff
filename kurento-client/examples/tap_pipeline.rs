//! Builds a pipeline with a WebRtcEndpoint and an RtpEndpoint, negotiates and connects them; then taps
//! the first publisher found on the server (one transaction: create + processOffer + 2 connects) and
//! counts the RTP packets that arrive. Releases only what it created.
//!
//! `cargo run -p kurento-client --example tap_pipeline -- ws://127.0.0.1:8888/kurento`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use kurento_client::prelude::*;

fn recvonly_offer(ip: &str, audio_port: u16, video_port: u16) -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 {ip}\r\ns=kurento-tap example\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {audio_port} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\n\
         m=video {video_port} RTP/AVPF 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 ccm fir\r\na=recvonly\r\n"
    )
}

/// Binds an even RTP port and the RTCP port above it.
fn bind_pair() -> anyhow::Result<(UdpSocket, UdpSocket)> {
    for _ in 0..100 {
        let rtp = UdpSocket::bind("127.0.0.1:0")?;
        let port = rtp.local_addr()?.port();
        if port.is_multiple_of(2) {
            if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
                return Ok((rtp, rtcp));
            }
        }
    }
    anyhow::bail!("no free port pair")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8888/kurento".into());
    let kms = KurentoClient::connect(&url).await?;

    // 1. A pipeline of our own.
    let pipeline = kms.create_pipeline().await?;
    let webrtc = pipeline
        .create::<WebRtcEndpoint>()
        .use_data_channels(true)
        .await?;
    let rtp = pipeline.create::<RtpEndpoint>().await?;
    let answer = rtp
        .process_offer(&recvonly_offer("127.0.0.1", 5004, 5006))
        .await?;
    webrtc.connect(&rtp, MediaType::Audio).await?;
    webrtc.connect(&rtp, MediaType::Video).await?;
    let links = webrtc.get_sink_connections(()).await?;
    println!("own pipeline {}", pipeline.id());
    println!(
        "  RtpEndpoint answer: {} lines, first m-line {:?}",
        answer.lines().count(),
        answer
            .lines()
            .find(|l| l.starts_with("m="))
            .unwrap_or_default()
    );
    for l in &links {
        println!("  connected {:?}: WebRtcEndpoint -> RtpEndpoint", l.r#type);
    }
    pipeline.release().await?;

    // 2. Tap a live publisher of someone else's room.
    let mut publisher = None;
    'find: for p in kms.server_manager().get_pipelines().await? {
        for child in p.get_children().await? {
            let Some(ep) = child.downcast::<WebRtcEndpoint>() else {
                continue;
            };
            let Ok(remote) = ep.get_remote_session_descriptor().await else {
                continue;
            };
            if remote.contains("a=sendonly")
                && ep.is_media_flowing_out(MediaType::Video, ()).await?
            {
                publisher = Some((p, ep));
                break 'find;
            }
        }
    }
    let Some((room, publisher)) = publisher else {
        println!("no live publisher on this server: nothing to tap");
        kms.close().await;
        return Ok(());
    };
    let (audio_rtp, _audio_rtcp) = bind_pair()?;
    let (video_rtp, _video_rtcp) = bind_pair()?;
    let offer = recvonly_offer(
        "127.0.0.1",
        audio_rtp.local_addr()?.port(),
        video_rtp.local_addr()?.port(),
    );
    let started = Instant::now();
    let mut tx = kms.transaction();
    let tap = tx.create(RtpEndpoint::builder(&room))?;
    tx.on(&tap).add_tag("owner", "kurento-client-example");
    tx.on(&tap).process_offer(&offer);
    tx.on(&publisher).connect(&tap, MediaType::Audio);
    tx.on(&publisher).connect(&tap, MediaType::Video);
    let results = tx.commit().await?;
    let tap = results.object(&tap)?;
    results.check()?;
    println!(
        "tapped {} in one transaction ({:.1} ms)",
        publisher.id(),
        started.elapsed().as_secs_f64() * 1e3
    );

    let count = |sock: UdpSocket| {
        std::thread::spawn(move || {
            sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
            let deadline = Instant::now() + Duration::from_secs(2);
            let (mut packets, mut bytes, mut pt) = (0u32, 0usize, None);
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                if let Ok(n) = sock.recv(&mut buf) {
                    if n >= 12 && buf[0] >> 6 == 2 {
                        packets += 1;
                        bytes += n;
                        pt = Some(buf[1] & 0x7f);
                    }
                }
            }
            (packets, bytes, pt)
        })
    };
    let audio = count(audio_rtp);
    let video = count(video_rtp);
    let (ap, ab, apt) = audio.join().expect("audio counter");
    let (vp, vb, vpt) = video.join().expect("video counter");
    println!("received in 2 s: audio {ap} RTP packets ({ab} B, pt {apt:?}), video {vp} RTP packets ({vb} B, pt {vpt:?})");
    tap.release().await?;
    kms.close().await;
    Ok(())
}
