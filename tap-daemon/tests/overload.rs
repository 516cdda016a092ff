//! Overload, in a process of its own (its memory figures must not include other tests).

use std::time::Duration;

use tap_protocol::*;
use tap_test_support::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_worker_sees_bounded_in_flight_and_fresh_chunks() {
    let scenario = "[[room]]\nname='r'\n[[room.participant]]\nname='a'\nvideo={fps=30}\n[[room.participant]]\nname='b'\nvideo={fps=30}\n[[room.participant]]\nname='c'\nvideo={fps=30}\n";
    let h = Harness::new()
        .scenario(scenario)
        .sim_ports(57000..=57499)
        .tap_ports(57500..=57999)
        .start()
        .await;
    let client = h.client().await;
    h.wait_taps(3).await;
    // 30 frames/s per participant offered; the worker takes 200 ms each: ~6x over capacity.
    let mut spec = video_spec("slow", None, Some(1), 320, 240, PixelFormat::Rgb24);
    spec.deadline_ms = 2000;
    let (seen, _w) = worker(&client, &spec.id, Duration::from_millis(200)).await;
    let _reg = Registration::new(&client, spec.clone()).await;
    let mut results = h.daemon.dispatcher.subscribe_results();
    let mut latencies = Vec::new();
    let mut rss_start = None;
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < until {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), results.recv()).await {
            latencies.push(r.latency_ms);
        }
        // Memory is compared from 2 s in (after pools and caches are warm) to the end.
        if rss_start.is_none() && tokio::time::Instant::now() + Duration::from_secs(4) >= until {
            rss_start = Some(proc_status("VmRSS:"));
        }
    }
    let rss_end = proc_status("VmRSS:");
    let rss_start = rss_start.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 20, "the worker was kept busy: {}", seen.len());
    // With one request in flight per participant, the worker never has more than 3 outstanding.
    let metrics = h.metrics().await;
    let superseded: f64 = metrics
        .lines()
        .find(|l| l.starts_with("kurento_tap_chunks_dropped_total{") && l.contains("superseded"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        superseded > seen.len() as f64,
        "most frames are dropped as superseded, not queued: {superseded}"
    );
    let in_flight: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("kurento_tap_chunks_in_flight{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(in_flight.iter().all(|v| *v <= 3.0), "{in_flight:?}");
    // Latency stays bounded: the last results are as fresh as the first ones (no queue builds up).
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p95 = latencies[latencies.len() * 95 / 100];
    assert!(
        p95 < 1000.0,
        "p95 capture→result {p95} ms with a 200 ms worker"
    );
    assert!(
        rss_end < rss_start + 20_000,
        "memory flat: {rss_start} → {rss_end} KiB"
    );
    h.stop().await;
}
