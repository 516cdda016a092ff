//! Opt-in consent end to end on kms-sim (issue 24): under `consent = opt-in` nobody is analysed
//! until a tag or a control request says yes; a control grant taps at once, a withdrawal stops the
//! results, a tag changed on the endpoint takes effect within a scan; requests for unknown
//! participants are refused and counted; every change is counted.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kurento_client::prelude::*;
use kurento_client::KurentoClient;
use tap_daemon::privacy::consent::{ConsentMode, CTL_CONSENT};
use tap_daemon::Daemon;
use tap_protocol::{PixelFormat, ResultMessage};
use tap_test_support::prelude::*;

const SCENARIO: &str = "
[[room]]
name = 'class'
[[room.participant]]
name = 'ana'
video = { width = 160, height = 120, fps = 10 }
[[room.participant]]
name = 'ben'
video = { width = 160, height = 120, fps = 10 }
extra_tags = { 'kurento-tap.consent' = 'true' }
[[room.participant]]
name = 'cyd'
video = { width = 160, height = 120, fps = 10 }
extra_tags = { 'kurento-tap.consent' = 'false' }
";

/// Participants whose results arrive on `sub` until `until`.
async fn who_has_results(
    sub: &mut async_nats::Subscriber,
    until: Instant,
) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), sub.next()).await {
        let r: ResultMessage = serde_json::from_slice(&m.payload).unwrap();
        *out.entry(r.participant).or_default() += 1;
    }
    out
}

/// Waits until `who` has a result on `sub` (or panics after `limit`).
async fn first_result_of(sub: &mut async_nats::Subscriber, who: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        let m = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no result of {who} within {limit:?}"))
            .unwrap();
        let r: ResultMessage = serde_json::from_slice(&m.payload).unwrap();
        if r.participant == who {
            return start.elapsed();
        }
    }
}

async fn tapped(daemon: &Daemon) -> Vec<String> {
    daemon
        .status()
        .await
        .into_iter()
        .map(|s| s.participant)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_analyses_only_after_consent_and_stops_on_withdrawal() {
    let _turn = one_media_rate_test_at_a_time().await;
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let gray = video_spec("gray", Some(5.0), None, 32, 32, PixelFormat::Gray8);
    let (_seen, _worker) = worker(&client, &gray.id, Duration::ZERO).await;
    let _r = Registration::new(&client, gray).await;
    let mut results = client.subscribe("tap.v1.result.>").await.unwrap();

    let h = Harness::new()
        .nats(nats)
        .scenario(SCENARIO)
        .sim_ports(52000..=52499)
        .tap_ports(52500..=52999)
        .configure(|c| {
            c.datachannel.enabled = false;
            c.consent = ConsentMode::OptIn;
        })
        .start()
        .await;
    let http = h.http();
    assert!(
        http_get(http, "/healthz").await.contains("consent: opt-in"),
        "the mode in force is shown"
    );
    let ask = |body: String| {
        let client = client.clone();
        async move {
            let reply = client
                .request(CTL_CONSENT, body.into())
                .await
                .expect("a consent request is answered");
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    let grant = |who: &str, yes: bool| {
        format!(r#"{{"room":"class","participant":"{who}","consent":{yes}}}"#)
    };

    // Only ben, whose endpoint says yes, is analysed: ana said nothing, cyd said no.
    assert_eq!(
        h.wait_taps(1)
            .await
            .iter()
            .map(|s| s.participant.as_str())
            .collect::<Vec<_>>(),
        ["ben"]
    );
    let seen = who_has_results(&mut results, Instant::now() + Duration::from_secs(3)).await;
    assert!(seen.get("ben").is_some_and(|n| *n >= 5), "{seen:?}");
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["ben"],
        "no consent, no results"
    );

    // A control grant taps ana at once; results follow within a result period or two.
    let answer = ask(grant("ana", true)).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["analysed"], true, "{answer}");
    assert!(
        tapped(&h.daemon).await.contains(&"ana".to_owned()),
        "tapped when answered"
    );
    let after = first_result_of(&mut results, "ana", Duration::from_secs(5)).await;
    println!("ana's first result {after:?} after the grant's answer");

    // A grant cannot override the application's tag saying no.
    let answer = ask(grant("cyd", true)).await;
    assert_eq!(
        (answer["ok"].clone(), answer["analysed"].clone()),
        (true.into(), false.into()),
        "{answer}"
    );

    // Unknown participants and bad requests: a clear error, counted.
    let answer = ask(grant("zoe", true)).await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("unknown participant"),
        "{answer}"
    );
    let answer = ask(r#"{"room":"class","participant":"ana"}"#.to_owned()).await;
    assert!(
        answer["error"].as_str().unwrap().contains("bad request"),
        "{answer}"
    );

    // Withdrawal by control: the tap stops at once, and no result of ana's follows.
    let answer = ask(grant("ana", false)).await;
    assert_eq!(
        (answer["ok"].clone(), answer["analysed"].clone()),
        (true.into(), false.into()),
        "{answer}"
    );
    assert!(!tapped(&h.daemon).await.contains(&"ana".to_owned()));
    // Results already on the wire when it stopped may still be delivered to this subscriber.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), results.next()).await {}
    let seen = who_has_results(&mut results, Instant::now() + Duration::from_secs(3)).await;
    assert!(
        !seen.contains_key("ana"),
        "results after withdrawal: {seen:?}"
    );
    assert!(seen.contains_key("ben"), "{seen:?}");

    // Withdrawal by tag: the application sets ben's tag to false; the next scan stops his tap.
    let kms = KurentoClient::connect(&h.sim.url()).await.unwrap();
    let ben_ep = h
        .daemon
        .status()
        .await
        .into_iter()
        .find(|s| s.participant == "ben")
        .unwrap()
        .endpoint;
    let ep: WebRtcEndpoint = kms.object(&ben_ep).unwrap();
    ep.add_tag(tap_protocol::tags::CONSENT, "false")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while tapped(&h.daemon).await.contains(&"ben".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "ben still tapped after his tag said no"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And granted again by tag.
    ep.add_tag(tap_protocol::tags::CONSENT, "true")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !tapped(&h.daemon).await.contains(&"ben".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "ben not tapped again after his tag said yes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Fresh results of his (older ones may still wait in the subscription).
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout_at(deadline.into(), results.next())
            .await
            .expect("a result of ben's after his tag said yes")
            .unwrap();
        let r: ResultMessage = serde_json::from_slice(&m.payload).unwrap();
        if r.participant == "ben" && r.capture_ms >= since_ms - 100.0 {
            break;
        }
    }

    let metrics = reqwest_metrics(http).await;
    for line in [
        "kurento_tap_consent_mode{mode=\"opt-in\"} 1",
        "kurento_tap_consent_mode{mode=\"opt-out\"} 0",
        // ana and cyd by control; ben at first sight and again by tag.
        "kurento_tap_consent_changes_total{change=\"granted\",source=\"control\"} 2",
        "kurento_tap_consent_changes_total{change=\"withdrawn\",source=\"control\"} 1",
        "kurento_tap_consent_changes_total{change=\"granted\",source=\"tag\"} 2",
        // cyd at first sight, ben by tag.
        "kurento_tap_consent_changes_total{change=\"withdrawn\",source=\"tag\"} 2",
        "kurento_tap_consent_refused_total{reason=\"unknown_participant\"} 1",
        "kurento_tap_consent_refused_total{reason=\"bad_request\"} 1",
        "kurento_tap_participants_not_tapped_total{reason=\"no_consent\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    h.stop().await;
}

/// The default (`opt-out`): everyone analysed but those who said no, and a control withdrawal
/// works there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_is_the_default_and_a_control_withdrawal_applies() {
    let _turn = one_media_rate_test_at_a_time().await;
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let gray = video_spec("gray", Some(5.0), None, 32, 32, PixelFormat::Gray8);
    let (_seen, _worker) = worker(&client, &gray.id, Duration::ZERO).await;
    let _r = Registration::new(&client, gray).await;
    let h = Harness::new()
        .nats(nats)
        .scenario(SCENARIO)
        .sim_ports(53000..=53499)
        .tap_ports(53500..=53999)
        .configure(|c| c.datachannel.enabled = false)
        .start()
        .await;
    let names: Vec<String> = h
        .wait_taps(2)
        .await
        .into_iter()
        .map(|s| s.participant)
        .collect();
    assert_eq!(names, ["ana", "ben"], "cyd opted out");
    let reply = client
        .request(
            CTL_CONSENT,
            r#"{"room":"class","participant":"ana","consent":false}"#.into(),
        )
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(tapped(&h.daemon).await, ["ben"]);
    // Scans go on: ana stays out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tapped(&h.daemon).await, ["ben"]);
    let metrics = h.metrics().await;
    assert!(metrics.contains("kurento_tap_consent_mode{mode=\"opt-out\"} 1"));
    assert!(http_get(h.http(), "/healthz")
        .await
        .contains("consent: opt-out"));
    assert!(
        metrics.contains("kurento_tap_participants_not_tapped_total{reason=\"opt_out\"} 2"),
        "cyd by tag, ana by control: {metrics}"
    );
    h.stop().await;
}
