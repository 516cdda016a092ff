//! One tap: our RtpEndpoint in the room's pipeline, the GStreamer receiver behind it, its chunker
//! and dispatcher, the watcher of its publisher and, when enabled, the DataChannel injector. Made
//! by [`TapContext::make_tap`] (which may run concurrently for many participants: it only reads
//! shared state) and stopped by [`Tap::stop`].

mod watch;

use std::sync::Arc;
use std::time::Instant;

use kurento_client::prelude::*;
use kurento_client::Error as KmsError;

use crate::discovery::Participant;
use crate::dispatch::{Dispatcher, TapDispatch, TapIdent, TapSink};
use crate::inject::{Injector, InjectorContext};
use crate::kms::release::release_bounded;
use crate::media::chunker::{Chunk, ChunkSink, Chunker, ConverterPool, LiveSpecs};
use crate::media::ports::{PortPair, PortPool};
use crate::media::receiver::{
    DecodedAudio, DecodedFrame, MediaPorts, MediaSink, ReceiveThreads, Receiver, ReceiverConfig,
};
use crate::media::sdp_offer::{check_answer_with, tap_offer_with, OPUS_PT, VIDEO_PT};
use crate::metrics::{MediaLabel, Metrics};
use crate::settings::DaemonConfig;
use tap_protocol::safe_token;

/// Why a tap could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The port range is exhausted.
    #[error("no free receive ports in the configured range")]
    NoPorts,
    /// GStreamer.
    #[error(transparent)]
    Receiver(#[from] crate::media::receiver::ReceiverError),
    /// KMS refused something.
    #[error("KMS: {0}")]
    Kms(#[from] KmsError),
    /// KMS's answer is unusable.
    #[error(transparent)]
    Sdp(#[from] crate::media::sdp_offer::SdpError),
    /// SRTP could not be set up (no key material is ever in the message).
    #[error("SRTP: {0}")]
    Srtp(String),
}

impl TapError {
    /// The metric label of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            TapError::NoPorts => "no_ports",
            TapError::Receiver(_) => "receiver",
            TapError::Kms(_) => "kms",
            TapError::Sdp(_) => "sdp",
            TapError::Srtp(_) => "srtp",
        }
    }
}

/// Connects the tap source's audio and/or video to the tap (`sink`: its id or pending reference).
/// The source is the publisher's WebRtcEndpoint, or under `--host openvidu` its PassThrough.
fn connect_publisher(
    tx: &mut kurento_client::Transaction,
    publisher: &MediaElement,
    sink: impl kurento_client::TxArg<MediaElement> + Copy,
    audio: bool,
    video: bool,
) {
    for (wanted, media) in [(audio, MediaType::Audio), (video, MediaType::Video)] {
        if wanted {
            tx.on(publisher).connect(sink, media);
        }
    }
}

/// Counts decoded media, then hands it to the chunker.
struct CountingSink {
    chunker: Chunker,
    metrics: Arc<Metrics>,
}

impl MediaSink for CountingSink {
    fn video(&self, frame: DecodedFrame) {
        self.metrics
            .decoded
            .get_or_create(&MediaLabel {
                media: "video".into(),
            })
            .inc();
        self.chunker.video(frame);
    }
    fn audio(&self, audio: DecodedAudio<'_>) {
        self.metrics
            .decoded
            .get_or_create(&MediaLabel {
                media: "audio".into(),
            })
            .inc();
        self.chunker.audio(audio);
    }
}

/// Passes chunks on, and records when the tap's first one came (`time_to_first_chunk_seconds`).
struct FirstChunk {
    inner: TapSink,
    since: Instant,
    seen: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl ChunkSink for FirstChunk {
    fn offer(&self, chunk: Chunk) {
        if !self.seen.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.metrics
                .time_to_first_chunk
                .observe(self.since.elapsed().as_secs_f64());
        }
        self.inner.offer(chunk);
    }
    fn converted(&self, model: &tap_protocol::ModelId, micros: u64) {
        self.inner.converted(model, micros);
    }
}

/// A running tap.
pub struct Tap {
    /// Who is tapped.
    pub participant: Participant,
    /// Our RtpEndpoint.
    pub tap: RtpEndpoint,
    /// The GStreamer side.
    pub receiver: Receiver,
    dispatch: Arc<TapDispatch>,
    _ports: Vec<PortPair>,
    watcher: tokio::task::JoinHandle<()>,
    /// Receiver errors already counted in the metrics.
    pub errors_seen: u64,
    /// Keyframe requests (sent, throttled) already counted in the metrics.
    pub keyframes_seen: (u64, u64),
    /// `video_frames_before_keyframe` as last exported.
    pub gated_seen: u64,
    /// The tap leg's video packets (lost, late, retransmissions asked, reordered) as last
    /// exported.
    pub tap_leg_seen: (u64, u64, u64, u64),
    /// Streams with an unusable sender clock already counted in the metrics.
    pub clocks_unusable_seen: u64,
    /// SRTP packets refused, as already counted in the metrics.
    pub srtp_rejected_seen: u64,
    injector: Option<Injector>,
}

impl Tap {
    /// Stops the tap: receiver, dispatch, injector (releasing its endpoint when `release`), and
    /// releases our RtpEndpoint when `release` (never anything else).
    pub async fn stop(mut self, kms: &KurentoClient, release: bool) {
        self.watcher.abort();
        self.dispatch.close();
        if let Some(injector) = self.injector.take() {
            injector.stop(release).await;
        }
        if release {
            release_bounded(kms, self.tap.id(), self.tap.release()).await;
        }
    }

    /// The DataChannel peer's WebRtcEndpoint, if one is up.
    pub fn has_injector(&self) -> bool {
        self.injector.is_some()
    }
}

/// What making a tap needs; cheap to clone, so setups run concurrently.
#[derive(Clone)]
pub struct TapContext {
    /// Configuration.
    pub config: Arc<DaemonConfig>,
    /// KMS.
    pub kms: KurentoClient,
    /// Its name.
    pub kms_name: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Chunk dispatch.
    pub dispatcher: Arc<Dispatcher>,
    /// Live model specs.
    pub live: LiveSpecs,
    /// Video converters shared by every tap's chunker.
    pub converters: Arc<ConverterPool>,
    /// Receive ports.
    pub pool: PortPool,
    /// Fused states and room moods for the injectors (absent with the fusion off).
    pub affect: Option<tokio::sync::broadcast::Sender<Arc<crate::mood::AffectUpdate>>>,
    /// SRTP on this KMS's tap legs, with this suite (`None`: plain RTP).
    pub srtp: Option<crate::media::srtp::Suite>,
    /// OpenVidu's sessions and signals (`--host openvidu`).
    pub openvidu: Option<Arc<crate::discovery::openvidu::client::OpenVidu>>,
}

/// The next shared receive thread a tap takes (round robin).
static NEXT_RECEIVE_THREAD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl TapContext {
    pub async fn make_tap(&self, p: Participant, first_seen: Instant) -> Result<Tap, TapError> {
        let pool = self.pool.clone();
        let audio_ports = if p.media.audio {
            Some(pool.take().ok_or(TapError::NoPorts)?)
        } else {
            None
        };
        let video_ports = if p.media.video.is_some() {
            Some(pool.take().ok_or(TapError::NoPorts)?)
        } else {
            None
        };
        let codec = p.media.video.clone();
        let ident = TapIdent {
            room: safe_token(&p.room),
            participant: safe_token(&p.name),
            endpoint: p.endpoint.clone(),
            kms: self.kms_name.clone(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        };
        // SRTP: our key now (it goes in the offer); KMS draws its own and answers with it.
        let srtp = match self.srtp {
            Some(suite) => Some(crate::media::srtp::SdesKey {
                suite,
                key: crate::media::srtp::MasterKey::generate(suite)
                    .map_err(|e| TapError::Srtp(e.to_string()))?,
            }),
            None => None,
        };
        let dispatch = TapDispatch::new(ident, self.dispatcher.clone());
        let sink = Arc::new(CountingSink {
            chunker: Chunker::new(
                self.live.clone(),
                Arc::new(FirstChunk {
                    inner: TapSink(dispatch.clone()),
                    since: first_seen,
                    seen: std::sync::atomic::AtomicBool::new(false),
                    metrics: self.metrics.clone(),
                }),
                self.converters.clone(),
            ),
            metrics: self.metrics.clone(),
        });
        // The receiver listens before KMS is told to connect: the first keyframe must not be lost.
        let receiver = Receiver::start(
            &ReceiverConfig {
                bind_ip: self.config.bind_ip,
                audio: audio_ports.as_ref().map(|a| MediaPorts {
                    rtp_port: a.rtp,
                    payload_type: OPUS_PT,
                }),
                video: match (&video_ports, &codec) {
                    (Some(v), Some(c)) => Some((
                        MediaPorts {
                            rtp_port: v.rtp,
                            payload_type: VIDEO_PT,
                        },
                        c.clone(),
                    )),
                    _ => None,
                },
                latency_ms: self.config.latency_ms,
                video_latency_ms: self.config.video_latency_ms,
                srtp: srtp.clone(),
                threads: match self.config.receive_threads {
                    None => ReceiveThreads::PerTap,
                    // Taps take the shared threads in turn.
                    Some(n) => ReceiveThreads::Shared(format!(
                        "kurento-tap-rx-{}",
                        NEXT_RECEIVE_THREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            % n.max(1)
                    )),
                },
            },
            sink,
        )?;
        let offer = tap_offer_with(
            self.config.bind_ip,
            audio_ports.as_ref().map(|a| a.rtp),
            video_ports
                .as_ref()
                .zip(codec.as_ref())
                .map(|(v, c)| (v.rtp, c)),
            srtp.as_ref(),
        );
        let pipeline: MediaPipeline = self.kms.object(&p.pipeline)?;
        // What the tap hangs from (the publisher, or OpenVidu's PassThrough), and the publisher.
        let source: MediaElement = self.kms.object(&p.endpoint)?;
        let publisher: WebRtcEndpoint = self.kms.object(p.publisher_endpoint())?;
        let mut tx = self.kms.transaction();
        let mut builder = RtpEndpoint::builder(&pipeline);
        if let Some(k) = &srtp {
            // The suite only: KMS draws its master key itself, so no key of KMS's crosses the
            // wire but in its answer.
            builder = builder.crypto(&kurento_client::SDES {
                crypto: Some(k.suite.kurento()),
                key: None,
                key_base64: None,
            });
        }
        let tap_ref = tx.create(builder)?;
        tx.on(&tap_ref)
            .add_tag(&self.config.tags.owner, &self.config.owner);
        tx.on(&tap_ref)
            .add_tag(&self.config.tags.tapped_endpoint, &p.endpoint);
        let offer_answer = tx.on(&tap_ref).process_offer(&offer);
        // Plain RTP: one transaction. SRTP: KMS's key is in its answer, and the receiver must hold
        // it before media flows (the first keyframe must decrypt), so `connect` waits for a second.
        if srtp.is_none() {
            connect_publisher(
                &mut tx,
                &source,
                &tap_ref,
                audio_ports.is_some(),
                video_ports.is_some(),
            );
        }
        let results = tx.commit().await?;
        // From here on, a failure must release the endpoint we created, and nothing else.
        let created = results.object(&tap_ref).ok();
        let outcome = (|| -> Result<crate::media::sdp_offer::AnswerPorts, TapError> {
            results.check()?;
            let answer = results.get(offer_answer)?;
            Ok(check_answer_with(
                &answer,
                audio_ports.is_some(),
                video_ports.is_some(),
                self.srtp,
            )?)
        })();
        let answer = match outcome {
            Ok(a) => a,
            Err(e) => {
                if let Some(t) = created {
                    let _ = t.release().await;
                }
                return Err(e);
            }
        };
        let Some(tap) = created else {
            return Err(TapError::Kms(KmsError::UnexpectedResponse {
                operation: "create".into(),
                reason: "no tap id".into(),
            }));
        };
        if srtp.is_some() {
            receiver.set_kms_keys(answer.audio_key.clone(), answer.video_key.clone());
            let mut tx = self.kms.transaction();
            connect_publisher(
                &mut tx,
                &source,
                &tap,
                audio_ports.is_some(),
                video_ports.is_some(),
            );
            if let Err(e) = tx.commit().await.map_err(TapError::from).and_then(|r| {
                r.check()?;
                Ok(())
            }) {
                let _ = tap.release().await;
                return Err(e);
            }
        }
        self.metrics
            .taps_started_by_crypto
            .get_or_create(&crate::metrics::CryptoLabel {
                crypto: if srtp.is_some() { "srtp" } else { "rtp" }.into(),
            })
            .inc();
        if let Some(a) = answer.audio_rtcp {
            receiver.set_kms_rtcp(false, a);
        }
        if let Some(v) = answer.video_rtcp {
            receiver.set_kms_rtcp(true, v);
            // Best effort (7.x; 40111 when nothing flows yet). The receiver also sends PLI itself.
            let _ = tap.request_keyframe().await;
        }
        let watcher = tokio::spawn(watch::watch_publisher(
            publisher,
            tap.clone(),
            self.metrics.clone(),
            receiver.stats.clone(),
            receiver.keyframe_requester(),
            p.media.video.is_some(),
        ));
        let mut ports = Vec::new();
        ports.extend(audio_ports);
        ports.extend(video_ports);
        // OpenVidu has no DataChannels: its results go as signals (`openvidu_rest`).
        let injector = (self.config.datachannel.enabled && p.publisher.is_none()).then(|| {
            Injector::start(
                InjectorContext {
                    kms: self.kms.clone(),
                    config: self.config.datachannel.clone(),
                    tags: self.config.tags.clone(),
                    owner: self.config.owner.clone(),
                    metrics: self.metrics.clone(),
                    affect: self.affect.clone(),
                },
                p.clone(),
                self.dispatcher.subscribe_room(&safe_token(&p.room)),
            )
        });
        Ok(Tap {
            participant: p,
            tap,
            receiver,
            dispatch,
            _ports: ports,
            watcher,
            errors_seen: 0,
            keyframes_seen: (0, 0),
            gated_seen: 0,
            tap_leg_seen: (0, 0, 0, 0),
            clocks_unusable_seen: 0,
            srtp_rejected_seen: 0,
            injector,
        })
    }
}

/// The tapped media, for status lines.
pub(crate) fn media_list(p: &Participant) -> Vec<String> {
    let mut m = Vec::new();
    if p.media.audio {
        m.push("audio".to_owned());
    }
    if let Some(v) = &p.media.video {
        m.push(format!("video:{}", v.encoding));
    }
    m
}
