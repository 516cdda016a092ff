//! `kurento-tap`: the sidecar's command line.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tap_daemon::config::{self, FileConfig, Overrides};
use tap_daemon::discovery::{list_rooms, TagKeys};
use tap_daemon::Daemon;

/// Live analysis of every participant of a Kurento call: taps media out of KMS, feeds models over NATS.
#[derive(Parser, Debug)]
#[command(version, name = "kurento-tap")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Run {
        /// KMS WebSocket URL.
        #[arg(long, env = "KURENTO_TAP_KURENTO")]
        kurento: Option<String>,
        /// NATS URL.
        #[arg(long, env = "KURENTO_TAP_NATS")]
        nats: Option<String>,
        /// Configuration file (TOML).
        #[arg(long, env = "KURENTO_TAP_CONFIG")]
        config: Option<PathBuf>,
        /// Receive address announced to KMS.
        #[arg(long, env = "KURENTO_TAP_BIND")]
        bind: Option<IpAddr>,
        /// Receive ports, MIN-MAX.
        #[arg(long, env = "KURENTO_TAP_PORTS")]
        ports: Option<String>,
        /// /metrics and /healthz address ("" disables); the data endpoints too unless --data-http.
        #[arg(long, env = "KURENTO_TAP_HTTP")]
        http: Option<String>,
        /// The dashboard, /events, /history and /models on an address of their own.
        #[arg(long, env = "KURENTO_TAP_DATA_HTTP")]
        data_http: Option<String>,
        /// File holding the data token those endpoints require (Authorization: Bearer).
        #[arg(long, env = "KURENTO_TAP_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Header an authenticating reverse proxy sets (trusted only when named).
        #[arg(long, env = "KURENTO_TAP_AUTH_PROXY_HEADER")]
        auth_proxy_header: Option<String>,
        /// Processing policy: emotions (default), expressions (observable expressions only, no
        /// emotion, valence or arousal) or aggregate (room summaries only); enforced before
        /// anything leaves the daemon (docs/privacy.md).
        #[arg(long, env = "KURENTO_TAP_POLICY")]
        policy: Option<String>,
        /// Consent: opt-out (default: everyone is analysed unless tagged kurento-tap.consent=false
        /// or withdrawn by tap.v1.ctl.consent) or opt-in (only those tagged
        /// kurento-tap.consent=true or granted by tap.v1.ctl.consent; docs/privacy.md).
        #[arg(long, env = "KURENTO_TAP_CONSENT")]
        consent: Option<String>,
        /// Encrypt the tap leg (KMS → daemon): auto (SRTP unless KMS is in this host and network
        /// namespace; default), sdes (always SRTP, SDES keys) or off (plain RTP).
        #[arg(long, env = "KURENTO_TAP_TAP_CRYPTO")]
        tap_crypto: Option<String>,
        /// SRTP suite of encrypted taps (AES_128_CM_HMAC_SHA1_80 default; AES_256_CM_HMAC_SHA1_80,
        /// or the _32 variants).
        #[arg(long, env = "KURENTO_TAP_SRTP_SUITE")]
        srtp_suite: Option<String>,
        /// Threads that receive and decode taps: a number N (default 2): N threads shared by every
        /// tap (packets reordered on them, no RTCP; for a daemon beside KMS), or per-tap: rtpbin,
        /// ~10 threads per tapped participant, jitterbuffer, RTCP with NACK. docs/operations.md.
        #[arg(long, env = "KURENTO_TAP_RECEIVE_THREADS")]
        receive_threads: Option<String>,
        /// Owner id tagged on created objects.
        #[arg(long, env = "KURENTO_TAP_OWNER")]
        owner: Option<String>,
        /// Put results into participants' DataChannels (true/false; default true).
        #[arg(long, env = "KURENTO_TAP_DATACHANNELS")]
        datachannels: Option<bool>,
        /// DataChannel messages per second per participant, at most.
        #[arg(long, env = "KURENTO_TAP_DATACHANNEL_RATE")]
        datachannel_rate: Option<f64>,
        /// Whose results a participant's DataChannel carries: participant (own) or room (all).
        #[arg(long, env = "KURENTO_TAP_DATACHANNEL_AUDIENCE")]
        datachannel_audience: Option<tap_daemon::inject::Audience>,
        /// Share the KMS's rooms with other daemons through leases in NATS (true/false).
        #[arg(long, env = "KURENTO_TAP_CLUSTER")]
        cluster: Option<bool>,
        /// This KMS's name in lease keys and the cluster view (default: host:port of its URL).
        #[arg(long, env = "KURENTO_TAP_KMS_NAME")]
        kms_name: Option<String>,
        /// The host application: kurento (any Kurento app; default) or openvidu (OpenVidu 2.x
        /// sessions: publishers by their streamId names, tapped at their PassThrough).
        #[arg(long, env = "KURENTO_TAP_HOST")]
        host: Option<String>,
        /// openvidu-server's REST API, http://host:port (names and signals; with --host openvidu).
        #[arg(long, env = "KURENTO_TAP_OPENVIDU_URL")]
        openvidu_url: Option<String>,
        /// File holding OpenVidu's secret (or KURENTO_TAP_OPENVIDU_SECRET; never a flag).
        #[arg(long, env = "KURENTO_TAP_OPENVIDU_SECRET_FILE")]
        openvidu_secret_file: Option<PathBuf>,
        /// Analyse OpenVidu screen shares too (true/false; default false).
        #[arg(long, env = "KURENTO_TAP_OPENVIDU_INCLUDE_SCREENS")]
        openvidu_include_screens: Option<bool>,
        /// Results into the call as OpenVidu signals (true/false; default true with a URL).
        #[arg(long, env = "KURENTO_TAP_OPENVIDU_SIGNALS")]
        openvidu_signals: Option<bool>,
    },
    /// Show which daemon holds which room (cluster mode).
    Cluster {
        /// NATS URL.
        #[arg(
            long,
            env = "KURENTO_TAP_NATS",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Tail or export stored results, room moods or fused states (JetStream).
    Results {
        /// NATS URL.
        #[arg(
            long,
            env = "KURENTO_TAP_NATS",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats: String,
        /// Only this room.
        #[arg(long)]
        room: Option<String>,
        /// What: per-model results, room moods (the room timeline) or fused states.
        #[arg(long, value_enum, default_value = "result")]
        kind: tap_daemon::control::results::Kind,
        /// Only what was stored in the last `DURATION` (90s, 10m, 2h, 1d).
        #[arg(long, value_parser = tap_daemon::control::results::parse_since)]
        since: Option<std::time::Duration>,
        /// Keep printing new results.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: tap_daemon::control::results::Format,
    },
    /// Run the fusion (fused states, room moods) on its own, over the NATS results of every daemon.
    Mood {
        /// NATS URL.
        #[arg(
            long,
            env = "KURENTO_TAP_NATS",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats: String,
        /// Configuration file (TOML; its `[mood]` table and `policy`).
        #[arg(long, env = "KURENTO_TAP_CONFIG")]
        config: Option<PathBuf>,
        /// Processing policy for what the fusion publishes (as for `run`).
        #[arg(long, env = "KURENTO_TAP_POLICY")]
        policy: Option<String>,
    },
    /// List rooms, participants and tap state.
    Rooms {
        /// KMS WebSocket URL, or several as name=url,name=url.
        #[arg(
            long,
            env = "KURENTO_TAP_KURENTO",
            default_value = "ws://127.0.0.1:8888/kurento"
        )]
        kurento: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    // Before any thread exists (the runtime's included): arenas made earlier would stay.
    let arenas = tap_daemon::memory::limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(arenas))
}

async fn run(arenas: tap_daemon::memory::ArenaLimit) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tap_daemon=info,kurento_tap=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tracing::debug!(%arenas, "malloc arenas");
    match Cli::parse().command {
        Command::Run {
            kurento,
            nats,
            config,
            bind,
            ports,
            http,
            data_http,
            token_file,
            auth_proxy_header,
            policy,
            consent,
            tap_crypto,
            srtp_suite,
            receive_threads,
            owner,
            datachannels,
            datachannel_rate,
            datachannel_audience,
            cluster,
            kms_name,
            host,
            openvidu_url,
            openvidu_secret_file,
            openvidu_include_screens,
            openvidu_signals,
        } => {
            let file = load_file(config.as_deref())?;
            let cfg = config::resolve(
                file,
                Overrides {
                    kurento,
                    nats,
                    bind,
                    ports,
                    http,
                    data_http,
                    token_file,
                    // The token itself only from the environment: never a flag (process lists).
                    token: std::env::var("KURENTO_TAP_TOKEN").ok(),
                    auth_proxy_header,
                    policy,
                    consent,
                    tap_crypto,
                    srtp_suite,
                    receive_threads,
                    owner,
                    datachannels,
                    datachannel_rate,
                    datachannel_audience,
                    cluster,
                    kms_name,
                    host,
                    openvidu_url,
                    openvidu_secret_file,
                    // The secret itself only from the environment: never a flag.
                    openvidu_secret: std::env::var("KURENTO_TAP_OPENVIDU_SECRET").ok(),
                    openvidu_include_screens,
                    openvidu_signals,
                },
            )?;
            let daemon = Daemon::start(cfg).await?;
            if let Some(addr) = daemon.http_addr {
                eprintln!("kurento-tap: metrics on http://{addr}/metrics");
            }
            if let Some(addr) = daemon.data_http_addr {
                eprintln!("kurento-tap: dashboard on http://{addr}/");
            }
            shutdown_signal().await;
            eprintln!("kurento-tap: shutting down (releasing taps, draining NATS; a second signal forces exit)");
            tokio::select! {
                _ = daemon.shutdown() => {}
                _ = shutdown_signal() => eprintln!("kurento-tap: second signal, exiting now"),
                _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
                    eprintln!("kurento-tap: shutdown took over 30 s, exiting");
                }
            }
            Ok(())
        }
        Command::Results {
            nats,
            room,
            kind,
            since,
            follow,
            format,
        } => {
            let client = async_nats::connect(nats.as_str())
                .await
                .with_context(|| format!("cannot connect to NATS at {nats}"))?;
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let exported = tap_daemon::control::results::export(
                client,
                kind,
                room.as_deref(),
                since,
                follow,
                format,
                &mut out,
            )
            .await;
            match exported {
                // The reader went away (`| head`, Ctrl-C in a pipe): a normal end for a tail.
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
                {
                    Ok(())
                }
                other => other.map(|_| ()),
            }
        }
        Command::Mood {
            nats,
            config,
            policy,
        } => {
            let file = load_file(config.as_deref())?;
            let cfg = config::resolve(
                file,
                Overrides {
                    nats: Some(nats.clone()),
                    policy,
                    ..Default::default()
                },
            )?;
            let client = tap_daemon::daemon::connect_nats(&cfg).await?;
            let mut settings = cfg.mood.clone();
            settings.enabled = true;
            eprintln!(
                "kurento-tap mood: fusing the results on {nats} (policy {})",
                settings.policy
            );
            tap_daemon::mood::run_standalone(
                client,
                settings,
                std::sync::Arc::new(tap_daemon::metrics::Metrics::new()),
                shutdown_signal(),
            )
            .await
        }
        Command::Cluster { nats, json } => {
            let client = async_nats::connect(nats.as_str())
                .await
                .with_context(|| format!("cannot connect to NATS at {nats}"))?;
            let js = async_nats::jetstream::new(client);
            let kv = js
                .get_key_value(tap_protocol::lease::LEASE_BUCKET)
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no lease bucket on {nats}: no daemon runs in cluster mode there"
                    )
                })?;
            let view = tap_daemon::cluster::read_view(&kv)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
                return Ok(());
            }
            println!("{} daemon(s)", view.daemons.len());
            for d in &view.daemons {
                println!(
                    "  {:<32} rooms {:>4}  kms {}{}",
                    d.daemon,
                    d.rooms,
                    d.kms.join(","),
                    d.http
                        .as_deref()
                        .map(|h| format!("  http://{h}/metrics"))
                        .unwrap_or_default()
                );
            }
            println!("{} room(s) held", view.rooms.len());
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            for r in &view.rooms {
                println!(
                    "  {:<20} {:<24} held by {:<32} for {} s  ({})",
                    r.kms,
                    r.room.as_deref().unwrap_or("?"),
                    r.daemon,
                    now_ms.saturating_sub(r.since_ms) / 1000,
                    r.pipeline
                );
            }
            Ok(())
        }
        Command::Rooms { kurento, json } => {
            let targets = config::parse_kms_list(&kurento)?;
            let mut all = Vec::new();
            for t in &targets {
                let kms = kurento_client::KurentoClient::connect(&t.url)
                    .await
                    .with_context(|| format!("cannot connect to KMS {} at {}", t.name, t.url))?;
                let rooms = list_rooms(&kms, &TagKeys::default()).await?;
                kms.close().await;
                all.push((t.name.clone(), rooms));
            }
            if json {
                // One KMS: the list of rooms, as before; several: the lists by KMS name.
                if all.len() == 1 {
                    println!("{}", serde_json::to_string_pretty(&all[0].1)?);
                } else {
                    let by_kms: std::collections::BTreeMap<&str, _> =
                        all.iter().map(|(n, r)| (n.as_str(), r)).collect();
                    println!("{}", serde_json::to_string_pretty(&by_kms)?);
                }
                return Ok(());
            }
            for (name, rooms) in &all {
                if all.len() > 1 {
                    println!("KMS {name}");
                }
                for r in rooms {
                    println!("room {}  ({})", r.room, r.pipeline);
                    for p in &r.participants {
                        println!(
                            "  {:<16} {:<20} {}{}{}",
                            p.name,
                            p.media.join(","),
                            if p.tapped { "tapped" } else { "not tapped" },
                            if p.live { "" } else { ", no media yet" },
                            if p.consent { "" } else { ", opted out" },
                        );
                    }
                }
                if rooms.is_empty() {
                    println!("no rooms");
                }
            }
            Ok(())
        }
    }
}

/// The configuration file if one was given, else every key at its default.
fn load_file(path: Option<&std::path::Path>) -> anyhow::Result<FileConfig> {
    Ok(match path {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
