//! The WebSocket front of the simulator.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::kmd::Kmd;
use crate::mediaset::{ConnCtx, MediaSet, SimConfig};
use crate::scenario::Scenario;

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Where to listen (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Rooms and participants.
    pub scenario: Scenario,
    /// Address written into SDP answers; default: the first non-loopback IPv4 address, like KMS.
    pub announce_ip: Option<std::net::IpAddr>,
    /// RTP ports (KMS `minPort`/`maxPort`).
    pub port_range: (u16, u16),
    /// Delay of `ObjectDestroyed` events after the object is gone (KMS raises them asynchronously;
    /// a loaded KMS later still).
    pub destroyed_event_delay: std::time::Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            listen: ([127, 0, 0, 1], 0).into(),
            scenario: Scenario::builtin(),
            announce_ip: None,
            port_range: (30000, 39999),
            destroyed_event_delay: std::time::Duration::from_millis(20),
        }
    }
}

/// A running simulator.
pub struct SimServer {
    addr: SocketAddr,
    media: Arc<MediaSet>,
    kill_conns: broadcast::Sender<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The first non-loopback IPv4 address of this host, as KMS picks for its answers.
pub fn first_non_loopback_ipv4() -> Option<std::net::IpAddr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

impl SimServer {
    /// Binds, starts serving, and starts the scenario's schedule.
    pub async fn start(options: SimOptions) -> anyhow::Result<Self> {
        crate::media::init()?;
        let listener = TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let announce_ip = options
            .announce_ip
            .or_else(first_non_loopback_ipv4)
            .unwrap_or_else(|| [127, 0, 0, 1].into());
        let media = MediaSet::new(
            Kmd::builtin(),
            SimConfig {
                announce_ip,
                port_range: options.port_range,
                destroyed_event_delay: options.destroyed_event_delay,
            },
        );
        let (kill_conns, _) = broadcast::channel(4);
        let server = SimServer {
            addr,
            media: media.clone(),
            kill_conns: kill_conns.clone(),
            tasks: Mutex::new(Vec::new()),
        };
        let accept = tokio::spawn(accept_loop(listener, media.clone(), kill_conns));
        let schedule = tokio::spawn(run_scenario(media.clone(), options.scenario));
        server
            .tasks
            .lock()
            .expect("tasks")
            .extend([accept, schedule]);
        info!(%addr, server_id = media.server_id(), %announce_ip, "kms-sim listening");
        Ok(server)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/kurento`.
    pub fn url(&self) -> String {
        format!("ws://{}/kurento", self.addr)
    }

    /// The server state.
    pub fn media_set(&self) -> &Arc<MediaSet> {
        &self.media
    }

    /// Cuts every open WebSocket abruptly (no close frame), as a network failure would. Sessions stay.
    pub fn drop_connections(&self) {
        let _ = self.kill_conns.send(());
    }

    /// Stops the server: sockets cut, objects dropped, RTP stopped.
    pub fn stop(&self) {
        self.drop_connections();
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
        self.media.clear();
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, media: Arc<MediaSet>, kill: broadcast::Sender<()>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let media = media.clone();
        let kill = kill.subscribe();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, peer, media, kill).await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    media: Arc<MediaSet>,
    mut kill: broadcast::Receiver<()>,
) -> anyhow::Result<()> {
    let ws = tokio_tungstenite::accept_async(stream).await?;
    debug!(%peer, "client connected");
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<String>(4096);
    let ctx = Arc::new(ConnCtx {
        tx,
        session: Mutex::new(None),
    });
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
    });
    let result = loop {
        tokio::select! {
            _ = kill.recv() => break Ok(()),
            msg = source.next() => match msg {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(Message::Text(text))) => {
                    // Each request runs on its own task: answers may leave out of order, as from KMS's
                    // worker threads (getUsedCpu sleeps its interval).
                    let media = media.clone();
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        if let Some(answer) = media.handle_frame(&ctx, text.as_str()).await {
                            let _ = ctx.tx.send(answer).await;
                        }
                    });
                }
                Some(Ok(Message::Close(_))) => break Ok(()),
                Some(Ok(_)) => {}
            }
        }
    };
    media.detach(&ctx);
    writer.abort();
    result
}

async fn run_scenario(media: Arc<MediaSet>, scenario: Scenario) {
    let _app_session = media.register_app_session();
    let start = tokio::time::Instant::now();
    let mut events: Vec<(u64, bool, usize, usize)> = Vec::new();
    for (r, room) in scenario.rooms.iter().enumerate() {
        for (p, part) in room.participants.iter().enumerate() {
            events.push((part.join_ms, true, r, p));
            if let Some(l) = part.leave_ms {
                events.push((l, false, r, p));
            }
        }
    }
    events.sort_by_key(|e| (e.0, !e.1));
    let mut endpoints = std::collections::HashMap::new();
    let mut openvidu = std::collections::HashMap::new();
    for (at, join, r, p) in events {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let room = &scenario.rooms[r];
        let part = &room.participants[p];
        if room.host == crate::scenario::Host::Openvidu {
            if join {
                let who = media.join_openvidu(&room.name, part);
                openvidu.insert((r, p), who);
            } else if let Some(who) = openvidu.remove(&(r, p)) {
                media.leave_openvidu(&who);
            }
        } else if join {
            let tag = room
                .tag
                .then_some((scenario.tag_keys.room.as_str(), room.name.as_str()));
            let id = media.join(&room.name, tag, part, &scenario.tag_keys);
            endpoints.insert((r, p), id);
        } else if let Some(id) = endpoints.remove(&(r, p)) {
            media.leave(&id);
        }
    }
}
