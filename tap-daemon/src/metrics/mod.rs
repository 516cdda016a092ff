//! Prometheus metrics of the daemon (text format at `/metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub mod labels;
mod record;

pub use labels::*;

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    /// OpenVidu's REST API answered the last refresh (1), did not (0); absent when not configured.
    pub openvidu_up: Gauge,
    /// OpenVidu REST requests by operation and outcome.
    pub openvidu_requests: Family<OpOutcomeLabel, Counter>,
    /// Results as OpenVidu signals, by outcome.
    pub openvidu_signals: Family<OutcomeLabel, Counter>,
    /// WebRtcEndpoints looked at under `--host openvidu`, by what their name says.
    pub openvidu_endpoints: Family<ReasonLabel, Counter>,
    /// Taps currently receiving.
    pub taps_active: Gauge,
    /// Taps currently receiving, by KMS.
    pub taps_by_kms: Family<KmsLabel, Gauge>,
    /// Tap attempts that failed, by reason.
    pub tap_errors: Family<ReasonLabel, Counter>,
    /// Participants seen and not tapped, by reason (opt-out, excluded…).
    pub not_tapped: Family<ReasonLabel, Counter>,
    /// Objects of ours found in KMS that no tap stood for, released by the rescan.
    pub orphans_released: Counter,
    /// Keyframe requests the receivers sent upstream (RTCP PLI/FIR to KMS).
    pub receiver_keyframe_requests: Counter,
    /// Keyframe requests held back by the per-tap throttle.
    pub receiver_keyframe_requests_throttled: Counter,
    /// H.264 frames dropped before a tap's first keyframe.
    pub receiver_frames_before_keyframe: Counter,
    /// SRTP/SRTCP packets from KMS that libsrtp refused once the keys were known (bad authentication, a replay).
    pub srtp_packets_rejected: Counter,
    /// Taps started, by the crypto of their leg (`srtp` or `rtp`).
    pub taps_started_by_crypto: Family<CryptoLabel, Counter>,
    /// Data-endpoint requests refused, by reason (`no_credential`, `wrong_token`, `wrong_session`,
    /// `wrong_login`, `credential_in_query`).
    pub http_refused: Family<ReasonLabel, Counter>,
    /// The processing policy in force: `kurento_tap_policy{policy="expressions"} 1`.
    pub policy: Family<PolicyLabel, Gauge>,
    /// Results kept in the daemon by the policy, by reason (`aggregate`, `undeclared_model`,
    /// `no_expression_outputs`).
    pub policy_withheld: Family<ReasonLabel, Counter>,
    /// Streams whose sender clock (RTCP sender reports) did not keep time: capture times from arrival.
    pub sender_clocks_unusable: Counter,
    /// Results taken into the fusion, by outcome (`fused`, `undeclared`, `late`, `over_capacity`,
    /// `invalid`).
    pub affect_results: Family<OutcomeLabel, Counter>,
    /// Room moods computed, by outcome (`published`, `withheld`: fewer than min_group).
    pub room_moods: Family<OutcomeLabel, Counter>,
    /// The consent mode in force: `kurento_tap_consent_mode{mode="opt-in"} 1`.
    pub consent_mode: Family<ModeLabel, Gauge>,
    /// Consent changes, by change (`granted`, `withdrawn`) and source (`tag`, `control`).
    pub consent_changes: Family<ConsentLabel, Counter>,
    /// Consent requests refused, by reason (`bad_request`, `unknown_participant`, `failed`, `full`).
    pub consent_refused: Family<ReasonLabel, Counter>,
    /// Participant setups (examine + tap) running now.
    pub setups_in_flight: Gauge,
    /// Most setups that ran at once since start (a room's participants are set up side by side).
    pub setups_peak: Gauge,
    /// Participant setups waiting for a place beside the running ones.
    pub setups_queued: Gauge,
    /// Time from a publisher's discovery to its tap running.
    pub setup_seconds: Histogram,
    /// Time from a publisher endpoint's creation (its ObjectCreated event, or its first sight in a
    /// scan when no event was seen) to its tap running.
    pub time_to_tap: Histogram,
    /// Time from a publisher endpoint's creation to its tap's first chunk offered to a model.
    pub time_to_first_chunk: Histogram,
    /// Decoded video frames and audio buffers.
    pub decoded: Family<MediaLabel, Counter>,
    /// GStreamer errors in receivers.
    pub decode_errors: Counter,
    /// Chunks sent to workers.
    pub chunks_sent: Family<ModelLabel, Counter>,
    /// Chunks dropped, by model and reason.
    pub chunks_dropped: Family<DropLabel, Counter>,
    /// Chunks in flight.
    pub in_flight: Family<ModelLabel, Gauge>,
    /// Results received.
    pub results: Family<ModelLabel, Counter>,
    /// Results that could not be stored in JetStream.
    pub results_unstored: Counter,
    /// Capture → chunk sent, seconds.
    pub capture_to_dispatch: Histogram,
    /// Capture → result back at the daemon, seconds, by model.
    pub capture_to_result: Family<ModelLabel, Histogram>,
    /// Time to convert one frame for one model, seconds.
    pub conversion: Histogram,
    /// Live models.
    pub models_live: Gauge,
    /// Registry entries rejected (invalid, too large for the server's max_payload).
    pub specs_rejected: Family<ReasonLabel, Counter>,
    /// Times KMS started transcoding for a publisher we tap.
    pub transcoding: Counter,
    /// Reconnections to KMS.
    pub kms_reconnects: Counter,
    /// Undecodable messages from KMS.
    pub kms_decode_errors: Gauge,
    /// Control requests (attach/detach) rejected as malformed.
    pub bad_control_requests: Counter,
    /// Taps made since start.
    pub taps_total: Counter,
    /// Keyframe requests (PLI) sent because no frame decoded.
    pub keyframe_requests: Counter,
    /// KMS `requestKeyframe` calls made because no frame decoded, by KMS's answer (`ok`,
    /// `not_flowing`: 40111, nothing flows yet; `gone`; `error`).
    pub kms_keyframe_requests: Family<OutcomeLabel, Counter>,
    /// Video packets on the tap leg (KMS → daemon), by outcome: `lost` (given up on), `late`
    /// (arrived after), `retransmission_requested` (NACKs sent; KMS resends from its history).
    pub tap_leg_video_packets: Family<OutcomeLabel, Counter>,
    /// Participants whose DataChannel currently receives results.
    pub datachannels_open: Gauge,
    /// DataChannel setups, by outcome (`opened`, `closed`, `timeout`, `data_source_in_use`, …).
    pub datachannel_setups: Family<OutcomeLabel, Counter>,
    /// Results for DataChannels, by outcome (`sent`, `superseded`, `stale`, `backlog`, …).
    pub datachannel_messages: Family<OutcomeLabel, Counter>,
    /// Chunks the chunkers offered (sent, superseded before sending, or stale before sending).
    pub chunks_offered: Family<ModelLabel, Counter>,
    /// Chunks offered per second over the scaling window, by model.
    pub model_offered_rate: Family<ScalingLabel, Gauge<f64, AtomicU64>>,
    /// Chunks answered with a result per second over the scaling window, by model.
    pub model_answered_rate: Family<ScalingLabel, Gauge<f64, AtomicU64>>,
    /// Share of offered chunks superseded by a newer one before they could be sent.
    pub model_superseded_share: Family<ScalingLabel, Gauge<f64, AtomicU64>>,
    /// What the model's live workers could answer per second at full load (from their reports).
    pub model_capacity: Family<ScalingLabel, Gauge<f64, AtomicU64>>,
    /// Offered / capacity: above 1 the workers cannot keep up, below 1 they idle part of the time.
    pub model_saturation: Family<ScalingLabel, Gauge<f64, AtomicU64>>,
    /// Worker instances that reported load lately, by model.
    pub model_workers: Family<ScalingLabel, Gauge>,
    /// Load reports refused as malformed or impossible.
    pub load_reports_rejected: Counter,
    /// Rooms whose lease this daemon holds (cluster mode).
    pub leases_held: Gauge,
    /// Lease events (`acquired`, `lost`, `renew_failed`, `released`, `swept`).
    pub lease_events: Family<OutcomeLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers everything under the `kurento_tap` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kurento_tap");
        let m = Metrics {
            openvidu_up: Gauge::default(),
            openvidu_requests: Family::default(),
            openvidu_signals: Family::default(),
            openvidu_endpoints: Family::default(),
            taps_active: Gauge::default(),
            taps_by_kms: Family::default(),
            tap_errors: Family::default(),
            not_tapped: Family::default(),
            orphans_released: Counter::default(),
            receiver_keyframe_requests: Counter::default(),
            receiver_keyframe_requests_throttled: Counter::default(),
            receiver_frames_before_keyframe: Counter::default(),
            srtp_packets_rejected: Counter::default(),
            taps_started_by_crypto: Family::default(),
            http_refused: Family::default(),
            policy: Family::default(),
            policy_withheld: Family::default(),
            sender_clocks_unusable: Counter::default(),
            affect_results: Family::default(),
            room_moods: Family::default(),
            consent_mode: Family::default(),
            consent_changes: Family::default(),
            consent_refused: Family::default(),
            setups_in_flight: Gauge::default(),
            setups_peak: Gauge::default(),
            setups_queued: Gauge::default(),
            setup_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            // 10 ms .. 33 s in steps of 1.5x: p50/p95/p99 of setups that take 0.1-2 s are readable.
            time_to_tap: Histogram::new(exponential_buckets(0.01, 1.5, 21)),
            time_to_first_chunk: Histogram::new(exponential_buckets(0.01, 1.5, 21)),
            decoded: Family::default(),
            decode_errors: Counter::default(),
            chunks_sent: Family::default(),
            chunks_dropped: Family::default(),
            in_flight: Family::default(),
            results: Family::default(),
            results_unstored: Counter::default(),
            capture_to_dispatch: latency_histogram(),
            capture_to_result: Family::new_with_constructor(latency_histogram),
            conversion: Histogram::new(exponential_buckets(0.000_01, 2.0, 14)),
            models_live: Gauge::default(),
            specs_rejected: Family::default(),
            transcoding: Counter::default(),
            kms_reconnects: Counter::default(),
            kms_decode_errors: Gauge::default(),
            bad_control_requests: Counter::default(),
            taps_total: Counter::default(),
            keyframe_requests: Counter::default(),
            kms_keyframe_requests: Family::default(),
            tap_leg_video_packets: Family::default(),
            datachannels_open: Gauge::default(),
            datachannel_setups: Family::default(),
            datachannel_messages: Family::default(),
            chunks_offered: Family::default(),
            model_offered_rate: Family::default(),
            model_answered_rate: Family::default(),
            model_superseded_share: Family::default(),
            model_capacity: Family::default(),
            model_saturation: Family::default(),
            model_workers: Family::default(),
            load_reports_rejected: Counter::default(),
            leases_held: Gauge::default(),
            lease_events: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "taps_active",
            "Participants being tapped",
            m.taps_active.clone(),
        );
        registry.register(
            "taps_active_by_kms",
            "Participants being tapped, by KMS",
            m.taps_by_kms.clone(),
        );
        registry.register("tap_errors", "Failed tap attempts", m.tap_errors.clone());
        registry.register(
            "receiver_keyframe_requests",
            "Keyframe requests the receivers sent to KMS (RTCP PLI/FIR; after loss, on a new tap)",
            m.receiver_keyframe_requests.clone(),
        );
        registry.register(
            "receiver_keyframe_requests_throttled",
            "Keyframe requests held back (at most one per 500 ms and tap)",
            m.receiver_keyframe_requests_throttled.clone(),
        );
        registry.register(
            "policy",
            "The processing policy in force (1 for its label)",
            m.policy.clone(),
        );
        registry.register(
            "policy_withheld",
            "Results the processing policy kept in the daemon, by reason",
            m.policy_withheld.clone(),
        );
        registry.register(
            "http_refused",
            "Requests to the dashboard and data endpoints refused, by reason",
            m.http_refused.clone(),
        );
        registry.register(
            "srtp_packets_rejected",
            "SRTP/SRTCP packets from KMS refused by libsrtp once the keys were known (authentication failed, a replay)",
            m.srtp_packets_rejected.clone(),
        );
        registry.register(
            "taps_started_by_crypto",
            "Taps started, by the protection of the tap leg (srtp or rtp)",
            m.taps_started_by_crypto.clone(),
        );
        registry.register(
            "receiver_frames_before_keyframe",
            "H.264 frames dropped before a tap's first keyframe (nothing to decode them against)",
            m.receiver_frames_before_keyframe.clone(),
        );
        registry.register(
            "affect_results",
            "Results taken into the fusion, by outcome",
            m.affect_results.clone(),
        );
        registry.register(
            "room_moods",
            "Room moods computed: published, or withheld (fewer than min_group contributors)",
            m.room_moods.clone(),
        );
        registry.register(
            "sender_clocks_unusable",
            "Tapped streams whose RTCP sender-report clock did not keep time (capture times from arrival)",
            m.sender_clocks_unusable.clone(),
        );
        registry.register(
            "tap_setups_in_flight",
            "Participant setups (examine + tap) running now",
            m.setups_in_flight.clone(),
        );
        registry.register(
            "tap_setups_peak",
            "Most participant setups that ran at once",
            m.setups_peak.clone(),
        );
        registry.register(
            "tap_setups_queued",
            "Participant setups waiting for a place beside the running ones",
            m.setups_queued.clone(),
        );
        registry.register(
            "tap_setup_seconds",
            "From a publisher's discovery to its tap running",
            m.setup_seconds.clone(),
        );
        registry.register(
            "time_to_tap_seconds",
            "Publisher endpoint created (ObjectCreated, or first seen by a scan) to its tap running",
            m.time_to_tap.clone(),
        );
        registry.register(
            "time_to_first_chunk_seconds",
            "Publisher endpoint created to its tap's first chunk offered to a model",
            m.time_to_first_chunk.clone(),
        );
        registry.register(
            "openvidu_up",
            "OpenVidu's REST API answered the last sessions refresh (1) or not (0)",
            m.openvidu_up.clone(),
        );
        registry.register(
            "openvidu_requests",
            "OpenVidu REST requests, by op (sessions, signal) and outcome",
            m.openvidu_requests.clone(),
        );
        registry.register(
            "openvidu_signals",
            "Results into the call as OpenVidu signals, by outcome (sent, superseded, stale, no_session, failures)",
            m.openvidu_signals.clone(),
        );
        registry.register(
            "openvidu_endpoints",
            "WebRtcEndpoints examined under --host openvidu, by what their name says (reason: publisher, subscriber, not_named_yet, unrecognised)",
            m.openvidu_endpoints.clone(),
        );
        registry.register(
            "orphans_released",
            "Objects of this daemon that no tap stood for (a leave or rejoin race), released by the rescan",
            m.orphans_released.clone(),
        );
        registry.register(
            "participants_not_tapped",
            "Participants not tapped, by reason",
            m.not_tapped.clone(),
        );
        registry.register(
            "decoded",
            "Decoded video frames and audio buffers",
            m.decoded.clone(),
        );
        registry.register(
            "decode_errors",
            "GStreamer receiver errors",
            m.decode_errors.clone(),
        );
        registry.register(
            "chunks_sent",
            "Chunks sent to workers",
            m.chunks_sent.clone(),
        );
        registry.register(
            "chunks_dropped",
            "Chunks dropped, by reason",
            m.chunks_dropped.clone(),
        );
        registry.register(
            "chunks_in_flight",
            "Chunks awaiting a worker's reply",
            m.in_flight.clone(),
        );
        registry.register(
            "results",
            "Results received from workers",
            m.results.clone(),
        );
        registry.register(
            "results_unstored",
            "Results JetStream did not acknowledge",
            m.results_unstored.clone(),
        );
        registry.register(
            "capture_to_dispatch_seconds",
            "Capture to chunk sent",
            m.capture_to_dispatch.clone(),
        );
        registry.register(
            "capture_to_result_seconds",
            "Capture to result at the daemon",
            m.capture_to_result.clone(),
        );
        registry.register(
            "frame_conversion_seconds",
            "Scaling and converting one frame for one model",
            m.conversion.clone(),
        );
        registry.register(
            "models_live",
            "Models registered and alive",
            m.models_live.clone(),
        );
        registry.register(
            "model_specs_rejected",
            "Registry entries rejected",
            m.specs_rejected.clone(),
        );
        registry.register(
            "transcoding",
            "KMS transcoding events on tapped publishers",
            m.transcoding.clone(),
        );
        registry.register(
            "kms_reconnects",
            "Reconnections to KMS",
            m.kms_reconnects.clone(),
        );
        registry.register(
            "kms_decode_errors",
            "Undecodable messages received from KMS",
            m.kms_decode_errors.clone(),
        );
        registry.register(
            "bad_control_requests",
            "Malformed attach/detach requests",
            m.bad_control_requests.clone(),
        );
        registry.register("taps", "Taps made since start", m.taps_total.clone());
        registry.register(
            "keyframe_requests",
            "Keyframe requests sent because no frame decoded",
            m.keyframe_requests.clone(),
        );
        registry.register(
            "kms_keyframe_requests",
            "KMS requestKeyframe calls made because no frame decoded, by KMS's answer",
            m.kms_keyframe_requests.clone(),
        );
        registry.register(
            "tap_leg_video_packets",
            "Video packets on the tap leg (KMS to daemon) lost, late, or asked again of KMS (NACK)",
            m.tap_leg_video_packets.clone(),
        );
        registry.register(
            "datachannels_open",
            "Participants whose DataChannel receives results",
            m.datachannels_open.clone(),
        );
        registry.register(
            "datachannel_setups",
            "DataChannel setups, by outcome",
            m.datachannel_setups.clone(),
        );
        registry.register(
            "datachannel_messages",
            "Results for DataChannels, by outcome",
            m.datachannel_messages.clone(),
        );
        registry.register(
            "chunks_offered",
            "Chunks the chunkers offered, by model (sent + superseded + stale before sending)",
            m.chunks_offered.clone(),
        );
        registry.register(
            "model_offered_per_second",
            "Chunks offered per second over the scaling window, by model",
            m.model_offered_rate.clone(),
        );
        registry.register(
            "model_answered_per_second",
            "Chunks answered with a result per second over the scaling window, by model",
            m.model_answered_rate.clone(),
        );
        registry.register(
            "model_superseded_share",
            "Share of offered chunks superseded before they could be sent, by model",
            m.model_superseded_share.clone(),
        );
        registry.register(
            "model_capacity_per_second",
            "Chunks the model's live workers could answer per second at full load (their load reports)",
            m.model_capacity.clone(),
        );
        registry.register(
            "model_saturation",
            "Offered / capacity, by model: the scaling signal (1 = workers fully busy)",
            m.model_saturation.clone(),
        );
        registry.register(
            "model_workers",
            "Worker instances that reported load lately, by model",
            m.model_workers.clone(),
        );
        registry.register(
            "load_reports_rejected",
            "Worker load reports refused as malformed or impossible",
            m.load_reports_rejected.clone(),
        );
        registry.register(
            "leases_held",
            "Rooms whose lease this daemon holds (cluster mode)",
            m.leases_held.clone(),
        );
        registry.register(
            "lease_events",
            "Room lease events, by outcome",
            m.lease_events.clone(),
        );
        registry.register(
            "consent_mode",
            "The consent mode in force (1 for its label): opt-out or opt-in",
            m.consent_mode.clone(),
        );
        registry.register(
            "consent_changes",
            "Consent changes (a participant's analysis granted or withdrawn), by source: tag or control",
            m.consent_changes.clone(),
        );
        registry.register(
            "consent_refused",
            "Consent requests refused, by reason",
            m.consent_refused.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
