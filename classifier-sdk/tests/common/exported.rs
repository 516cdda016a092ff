#![allow(dead_code)]
//! What the daemon and the workers export, from their real metric registries (every labelled family
//! given one series, since a family without series is not exposed): for the checks of compose/ and
//! deploy/helm.

use tap_daemon::metrics::{
    DropLabel, KmsLabel, MediaLabel, Metrics, ModelLabel, ReasonLabel, ScalingLabel,
};

/// Sample names a registry exposes (`_total` for counters, `_bucket`/`_sum`/`_count` for histograms).
pub fn names(exposition: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in exposition.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#") || parts.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => out.push(format!("{name}_total")),
            "histogram" => out.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
            _ => out.push(name.to_owned()),
        }
    }
    out
}

/// `name label,label` for every sample line with labels.
pub fn label_keys(exposition: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, _)) = rest.split_once('}') else {
            continue;
        };
        let keys: Vec<&str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .collect();
        out.push(format!("{name} {}", keys.join(",")));
    }
    out
}

/// The daemon's and a worker's expositions, every family with a series.
pub fn expositions() -> (String, String) {
    let daemon = Metrics::new();
    let model = ModelLabel {
        model: "m@1".into(),
    };
    let reason = ReasonLabel { reason: "r".into() };
    let _ = daemon.tap_errors.get_or_create(&reason);
    let _ = daemon.not_tapped.get_or_create(&reason);
    let _ = daemon.specs_rejected.get_or_create(&reason);
    let _ = daemon.decoded.get_or_create(&MediaLabel {
        media: "video".into(),
    });
    let _ = daemon.chunks_sent.get_or_create(&model);
    let _ = daemon.chunks_offered.get_or_create(&model);
    let _ = daemon.chunks_dropped.get_or_create(&DropLabel {
        model: "m@1".into(),
        reason: "r".into(),
    });
    let _ = daemon.in_flight.get_or_create(&model);
    let _ = daemon.results.get_or_create(&model);
    let _ = daemon.capture_to_result.get_or_create(&model);
    let scaling = ScalingLabel::of("m@1");
    let _ = daemon.model_offered_rate.get_or_create(&scaling);
    let _ = daemon.model_answered_rate.get_or_create(&scaling);
    let _ = daemon.model_superseded_share.get_or_create(&scaling);
    let _ = daemon.model_capacity.get_or_create(&scaling);
    let _ = daemon.model_saturation.get_or_create(&scaling);
    let _ = daemon.model_workers.get_or_create(&scaling);
    let _ = daemon
        .taps_by_kms
        .get_or_create(&KmsLabel { kms: "k".into() });
    daemon.lease_events("acquired");
    daemon.datachannel_setup("opened");
    daemon.datachannel_message("sent");
    let worker = classifier_sdk::WorkerMetrics::new();
    worker.drop_reason("stale");
    (daemon.encode(), worker.encode())
}
