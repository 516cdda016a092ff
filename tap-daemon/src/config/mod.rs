//! The configuration file (TOML). Every key is optional; command-line flags and `KURENTO_TAP_*`
//! environment variables override it.
//!
//! ```toml
//! kurento = "ws://127.0.0.1:8888/kurento"   # or several: "a=ws://10.0.0.1:8888/kurento,b=ws://…"
//! kms_name = "kms-a"              # this KMS in lease keys, results and the cluster view (default: host:port)
//! nats = "nats://127.0.0.1:4222"
//! nats_creds = "/etc/kurento-tap/tap.creds"   # or nats_token = "…"
//! bind = "127.0.0.1"              # receive address, announced to KMS: must be reachable from it
//! ports = "40000-40999"           # receive ports (2 per tapped medium)
//! http = "127.0.0.1:9464"         # /metrics and /healthz ("" to disable), and the data endpoints unless data_http
//! data_http = "127.0.0.1:9465"    # the dashboard, /events, /history, /models on a listener of their own
//! token_file = "/etc/kurento-tap/token"   # the data token they require (Authorization: Bearer; ≥ 24 chars)
//! auth_proxy_header = "X-Forwarded-User"  # or: trust an authenticating reverse proxy's header
//! policy = "emotions"            # what may leave the daemon: emotions, expressions, aggregate (docs/privacy.md)
//! tap_crypto = "auto"             # tap leg: auto (SRTP unless KMS is in this namespace), sdes, off
//! srtp_suite = "AES_128_CM_HMAC_SHA1_80"
//! receive_threads = "2"          # default: taps received and decoded on 2 threads shared by all; or "per-tap" (rtpbin, RTCP)
//! host = "kurento"                # or "openvidu": OpenVidu 2.x sessions (docs/integration.md, "OpenVidu 2")
//! owner = "kurento-tap"           # tag value on what this daemon creates
//! latency_ms = 100                # jitterbuffer, audio
//! video_latency_ms = 300          # jitterbuffer, video: the longest wait for a lost packet's resend
//! include_rooms = ["*"]
//! exclude_rooms = ["test-*"]
//! exclude_participants = ["recorder"]
//! consent = "opt-out"             # or "opt-in": only participants tagged kurento-tap.consent=true or granted by tap.v1.ctl.consent
//! results_max_age_s = 86400
//! results_per_subject = 1000
//!
//! [datachannel]                 # results into participants' DataChannels (docs/integration.md)
//! enabled = true
//! max_rate_hz = 4.0               # messages per second per participant, all models together
//! max_message_bytes = 4096
//! max_wait_ms = 2000              # a result waiting longer for its turn is dropped
//! label = "kurento-tap"
//! replace_data_source = false     # never take over a DATA link the app made
//! audience = "participant"        # or "room": everyone's results to everyone in the room
//! ice_ports = "41000-41099"       # UDP ports of the peers' ICE (default: any), apart from `ports`
//!
//! [mood]                        # fused states and room moods (docs/architecture.md, docs/privacy.md)
//! enabled = true
//! min_group = 3                   # no room aggregate from fewer contributors (presenter excluded)
//! publish_states = true           # per-participant states on tap.v1.state.* (NATS only)
//! smoothing_s = 2.0               # time constant of the smoothing
//! stale_s = 10.0                  # a modality without input this long is dropped
//! max_age_s = 86400               # history kept in JetStream TAP_AFFECT_V1
//! per_subject = 14400             # and at most this many per participant / room (4 h at 1/s)
//!
//! [cluster]                     # several daemons share the KMS's rooms (docs/operations.md)
//! enabled = false
//! lease_ttl_ms = 3000             # a dead daemon's rooms are taken over after this (+ ~1 s)
//! renew_ms = 1000
//! margin_ms = 1000                # a holder stops trusting its lease ttl - margin after renewing
//! placement_delay_ms = 1500       # a busier daemon leaves a new room to idler ones this long
//! rebalance_ms = 30000            # over fair share + 1: hand one room over this often (0: never)
//!
//! [openvidu]                    # with host = "openvidu"
//! url = "http://127.0.0.1:5443"   # openvidu-server's REST API (optional: names and signals)
//! secret_file = "/etc/kurento-tap/openvidu-secret"   # or KURENTO_TAP_OPENVIDU_SECRET
//! include_screens = false         # analyse screen shares too
//! refresh_ms = 5000               # GET /openvidu/api/sessions this often
//! timeout_ms = 3000               # each request's limit
//! signals = true                  # results into the call as signals
//! signal_type = "kurento-tap"     # the page listens to signal:kurento-tap
//! signal_rate_hz = 4.0
//! signal_audience = "participant" # or "room"
//!
//! [tags]
//! room = "kurento-tap.room"
//! participant = "kurento-tap.participant"
//! role = "kurento-tap.role"
//! consent = "kurento-tap.consent"
//! owner = "kurento-tap.owner"
//! tapped_endpoint = "kurento-tap.endpoint"
//! ```

mod file;
mod parse;
mod resolve;
#[cfg(test)]
mod tests;

pub use file::*;
pub use parse::{parse_kms_list, parse_ports, parse_receive_threads, MAX_RECEIVE_THREADS};
pub use resolve::{resolve, Overrides, MAX_HISTORY_S};
