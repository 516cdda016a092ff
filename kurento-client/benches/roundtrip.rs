//! Benchmark (prints figures; not a test): invoke round trips per second, and the time to set up a
//! tap (create RtpEndpoint + processOffer + 2 connects) with and without a transaction.
//!
//! `cargo bench -p kurento-client --bench roundtrip` runs against an in-process kms-sim (which then
//! shares the CPU with the client); `KMS_URL=ws://host:8888/kurento` runs it against another server.

use std::time::{Duration, Instant};

use kms_sim::{Scenario, SimOptions, SimServer};
use kurento_client::prelude::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn offer(port: u16) -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\n\
         m=video {} RTP/AVPF 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 ccm fir\r\na=recvonly\r\n",
        port + 2
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _server;
    let url = match std::env::var("KMS_URL") {
        Ok(u) => u,
        Err(_) => {
            // A room without participants: no RTP is sent, so the figures are the protocol's alone.
            let s = SimServer::start(SimOptions {
                scenario: Scenario::default(),
                announce_ip: Some([127, 0, 0, 1].into()),
                ..Default::default()
            })
            .await?;
            let u = s.url();
            _server = s;
            u
        }
    };
    let kms = KurentoClient::connect(&url).await?;
    let pipeline = kms.create_pipeline().await?;
    pipeline.set_name("bench").await?;
    println!("server: {url}");

    // Sequential round trips.
    let n = 5000;
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        pipeline.get_name().await?;
        lat.push(t.elapsed());
    }
    let total = t0.elapsed();
    lat.sort();
    println!(
        "invoke getName, sequential:     {:>8.0} round trips/s   p50 {:.3} ms  p99 {:.3} ms  ({n} calls)",
        n as f64 / total.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );

    // Concurrent round trips (64 in flight).
    let n = 20_000;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let p = pipeline.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..(n / 64 + usize::from(w < n % 64)) {
                p.get_name().await.expect("getName");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "invoke getName, 64 in flight:   {:>8.0} round trips/s   ({n} calls)",
        n as f64 / t0.elapsed().as_secs_f64()
    );

    // Tap setup.
    let source = pipeline.create::<WebRtcEndpoint>().await?;
    let rounds = 200;
    let mut plain = Vec::new();
    let mut tx_times = Vec::new();
    for i in 0..rounds {
        let port = 50000 + (i as u16 % 1000) * 4;
        let t = Instant::now();
        let tap = pipeline.create::<RtpEndpoint>().await?;
        tap.process_offer(&offer(port)).await?;
        source.connect(&tap, MediaType::Audio).await?;
        source.connect(&tap, MediaType::Video).await?;
        plain.push(t.elapsed());
        tap.release().await?;

        let t = Instant::now();
        let mut tx = kms.transaction();
        let r = tx.create(RtpEndpoint::builder(&pipeline))?;
        tx.on(&r).process_offer(&offer(port));
        tx.on(&source).connect(&r, MediaType::Audio);
        tx.on(&source).connect(&r, MediaType::Video);
        let results = tx.commit().await?;
        results.check()?;
        tx_times.push(t.elapsed());
        results.object(&r)?.release().await?;
    }
    plain.sort();
    tx_times.sort();
    println!(
        "tap setup, 4 requests:          p50 {:.3} ms  p99 {:.3} ms  ({rounds} taps)",
        ms(percentile(&plain, 0.5)),
        ms(percentile(&plain, 0.99))
    );
    println!(
        "tap setup, one transaction:     p50 {:.3} ms  p99 {:.3} ms  ({rounds} taps)",
        ms(percentile(&tx_times, 0.5)),
        ms(percentile(&tx_times, 0.99))
    );
    pipeline.release().await?;
    kms.close().await;
    Ok(())
}
