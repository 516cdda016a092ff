//! `kms-sim --listen 127.0.0.1:8888 [--scenario FILE]`

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kms_sim::{Scenario, SimOptions, SimServer};

/// A Kurento Media Server simulator: real JSON-RPC, real RTP.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (the WebSocket is served at /kurento).
    #[arg(long, default_value = "127.0.0.1:8888", env = "KMS_SIM_LISTEN")]
    listen: SocketAddr,
    /// Scenario file (TOML); without it, a built-in room of two participants.
    #[arg(long, env = "KMS_SIM_SCENARIO")]
    scenario: Option<PathBuf>,
    /// Address written into SDP answers (default: first non-loopback IPv4, like KMS).
    #[arg(long)]
    announce_ip: Option<std::net::IpAddr>,
    /// RTP port range, `MIN-MAX`.
    #[arg(long, default_value = "30000-39999")]
    ports: String,
    /// Encode each distinct stream once and replay it to every tap at real time (fresh timestamps
    /// and sender reports): many publishers at little CPU, for benchmarks of the daemon.
    #[arg(long, env = "KMS_SIM_PRE_ENCODED")]
    pre_encoded: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kms_sim=info".into()),
        )
        .init();
    let args = Args::parse();
    let scenario = match &args.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::builtin(),
    };
    let (min, max) = args
        .ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .filter(|(a, b)| a < b && b - a >= 4)
        .context("--ports must be MIN-MAX with at least 4 ports")?;
    kms_sim::replay::set_pre_encoded(args.pre_encoded);
    let server = SimServer::start(SimOptions {
        listen: args.listen,
        scenario,
        announce_ip: args.announce_ip,
        port_range: (min, max),
        ..Default::default()
    })
    .await?;
    println!("kms-sim listening on {}", server.url());
    tokio::signal::ctrl_c().await?;
    server.stop();
    Ok(())
}
