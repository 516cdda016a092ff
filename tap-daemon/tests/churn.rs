//! Join/leave churn, in a process of its own (thread and port counts must be its own).

use std::time::Duration;

use tap_test_support::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_join_leave_cycles_leak_nothing() {
    let mut scenario = String::from(
        "[[room]]\nname='churn'\n[[room.participant]]\nname='host'\naudio={}\nleave_ms=9500\n",
    );
    for i in 0..50 {
        scenario.push_str(&format!(
            "[[room.participant]]\nname='g{i}'\nvideo={{width=160, height=120}}\naudio={{}}\njoin_ms={}\nleave_ms={}\n",
            100 + i * 150,
            100 + i * 150 + 1000
        ));
    }
    let h = Harness::new()
        .scenario(scenario)
        .sim_ports(61000..=62999)
        .tap_ports(63000..=63999)
        .start()
        .await;
    let threads_before = proc_status("Threads:");
    tokio::time::sleep(Duration::from_millis(11_000)).await;
    let m = h.metrics().await;
    let taps_total: f64 = m
        .lines()
        .find(|l| l.starts_with("kurento_tap_taps_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    // Printed for scripts/stress-test's run logs (the bench measures; this only reports).
    eprintln!(
        "churn: {taps_total} of 51 participants tapped while present; time to tap p50 {:.0} ms, p95 {:.0} ms",
        histogram_quantile(&m, "kurento_tap_time_to_tap_seconds", 0.5) * 1e3,
        histogram_quantile(&m, "kurento_tap_time_to_tap_seconds", 0.95) * 1e3
    );
    assert!(
        taps_total >= 45.0,
        "{taps_total} of 51 participants tapped while present\n{m}"
    );
    assert!(h.daemon.status().await.is_empty());
    assert!(m.contains("kurento_tap_taps_active 0"), "{m}");
    assert_eq!(h.daemon.ports.in_use(), 0, "every port returned");
    assert!(
        h.sim
            .media_set()
            .object_ids()
            .iter()
            .all(|i| !i.ends_with("RtpEndpoint")),
        "no tap left in KMS"
    );
    let threads_after = proc_status("Threads:");
    assert!(
        threads_after <= threads_before + 8,
        "threads {threads_before} → {threads_after}"
    );
    h.stop().await;
}
