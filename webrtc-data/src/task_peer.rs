//! The offering side of the same conversation as [`crate::DataPeer`], run as one tokio task on
//! str0m's sans-I/O WebRTC state machine (ICE, DTLS, SCTP) instead of a `webrtcbin` pipeline.
//!
//! Why it exists: a `webrtcbin` peer runs ten threads of its own (`webrtc:pc`, `webrtc:ice`,
//! `nicesrc`, `dtlsenc`, `sctpenc`, `sctpdec`, a queue, an RTCP thread and an `appsrc` per
//! channel) and takes ~1.1 MiB, so a daemon with a DataChannel peer per tapped participant ran 500
//! threads at 50 participants. Here a peer is a task and a few UDP sockets: every peer shares the
//! runtime's threads.
//!
//! What it keeps from the Kurento conversation ([`crate`] docs): it never opens a channel itself
//! (KMS creates it with `createDataChannel` and the peer adopts it), and its offer gets its
//! `m=application` from one pre-negotiated channel on [`crate::SDP_PLACEHOLDER_STREAM`], which
//! sends no DCEP OPEN and carries nothing.
//!
//! Every mutation of the state machine is followed by draining its output under the same lock
//! (str0m's one rule); datagrams are sent with `try_send_to` (a full socket buffer drops one,
//! which SCTP retransmits), so nothing here waits or queues without bound.

use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::{PeerError, PeerEvent, PeerOptions, SendError, SDP_PLACEHOLDER_STREAM};

/// How long ICE may stay disconnected before the peer reports `failed` and stops (the remote
/// endpoint was released, or the path is gone; consent freshness gives up after about as long).
pub const DISCONNECTED_GIVE_UP: Duration = Duration::from_secs(15);

/// A data-only WebRTC peer that offers, run as one tokio task (see the module docs).
pub struct TaskPeer {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TaskPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskPeer")
            .field("name", &self.inner.name)
            .field(
                "local",
                &self
                    .inner
                    .sockets
                    .iter()
                    .map(|(a, _)| a)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Drop for TaskPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Inner {
    name: String,
    state: Mutex<State>,
    /// Wakes the task when a mutation from outside moved the next deadline.
    wake: Notify,
    events: mpsc::Sender<PeerEvent>,
    dropped: AtomicU64,
    sockets: Vec<(SocketAddr, UdpSocket)>,
    max_backlog: usize,
}

struct State {
    rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    placeholder: Option<ChannelId>,
    /// Channels adopted from the remote side, oldest first, with the number reported for each.
    channels: Vec<(ChannelId, i32)>,
    next_number: i32,
    next_timeout: Instant,
    disconnected_since: Option<Instant>,
    /// The state machine failed or gave up: nothing more is sent or received.
    over: bool,
}

impl Inner {
    fn emit(&self, ev: PeerEvent) {
        if self.events.try_send(ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drains the state machine's output until its next timeout (after every mutation).
    fn drain(&self, s: &mut State) {
        loop {
            match s.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    s.next_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    let socket = self
                        .sockets
                        .iter()
                        .find(|(local, _)| *local == t.source)
                        .or(self.sockets.first());
                    if let Some((_, socket)) = socket {
                        // A full send buffer drops this datagram: ICE and SCTP retransmit.
                        if let Err(e) = socket.try_send_to(&t.contents, t.destination) {
                            debug!(peer = %self.name, to = %t.destination, error = %e, "datagram not sent");
                        }
                    }
                }
                Ok(Output::Event(ev)) => self.on_event(s, ev),
                Err(e) => {
                    self.emit(PeerEvent::Error(format!("WebRTC: {e}")));
                    self.give_up(s, "failed");
                    return;
                }
            }
        }
    }

    fn on_event(&self, s: &mut State, ev: Event) {
        match ev {
            Event::IceConnectionStateChange(state) => {
                let text = match state {
                    IceConnectionState::New => "new",
                    IceConnectionState::Checking => "connecting",
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        s.disconnected_since = None;
                        return;
                    }
                    IceConnectionState::Disconnected => {
                        s.disconnected_since.get_or_insert_with(Instant::now);
                        "disconnected"
                    }
                };
                self.emit(PeerEvent::Connection(text.into()));
            }
            // ICE and DTLS are up.
            Event::Connected => self.emit(PeerEvent::Connection("connected".into())),
            Event::ChannelOpen(id, label) => {
                if Some(id) == s.placeholder {
                    return;
                }
                let number = s.next_number;
                s.next_number += 1;
                s.channels.push((id, number));
                self.emit(PeerEvent::ChannelOpen { label, id: number });
            }
            Event::ChannelClose(id) => {
                if let Some(i) = s.channels.iter().position(|(c, _)| *c == id) {
                    let (_, number) = s.channels.remove(i);
                    self.emit(PeerEvent::ChannelClosed { id: number });
                }
            }
            Event::ChannelData(d) => {
                let Some(&(_, id)) = s.channels.iter().find(|(c, _)| *c == d.id) else {
                    return;
                };
                if d.binary {
                    self.emit(PeerEvent::Binary { id, bytes: d.data });
                } else {
                    self.emit(PeerEvent::Text {
                        id,
                        text: String::from_utf8_lossy(&d.data).into_owned(),
                    });
                }
            }
            _ => {}
        }
    }

    /// Ends the conversation: the channels close and the connection state is reported.
    fn give_up(&self, s: &mut State, why: &str) {
        if s.over {
            return;
        }
        s.over = true;
        for (_, id) in std::mem::take(&mut s.channels) {
            self.emit(PeerEvent::ChannelClosed { id });
        }
        self.emit(PeerEvent::Connection(why.into()));
    }
}

impl TaskPeer {
    /// Binds the peer's UDP sockets (one per local IPv4 address, in `ice_ports` if set) and
    /// starts its task on the current tokio runtime. Events arrive on the returned receiver.
    pub fn start(options: PeerOptions) -> Result<(TaskPeer, mpsc::Receiver<PeerEvent>), PeerError> {
        let addresses = local_ipv4_addresses();
        let mut sockets = Vec::new();
        for ip in addresses {
            match bind_udp(ip, options.ice_ports) {
                Ok(s) => sockets.push(s),
                Err(e) => debug!(%ip, error = %e, "no ICE socket on this address"),
            }
        }
        if sockets.is_empty() {
            return Err(PeerError::Network(match options.ice_ports {
                Some((a, b)) => format!("no UDP port free in {a}-{b} on any local address"),
                None => "no local IPv4 address to bind".into(),
            }));
        }
        let mut rtc = new_rtc()?;
        for (addr, _) in &sockets {
            rtc.add_local_candidate(host_candidate(*addr)?);
        }
        let (tx, rx) = mpsc::channel(options.event_capacity.max(1));
        let inner = Arc::new(Inner {
            name: options.name,
            state: Mutex::new(State {
                rtc,
                pending: None,
                placeholder: None,
                channels: Vec::new(),
                next_number: 0,
                next_timeout: Instant::now(),
                disconnected_since: None,
                over: false,
            }),
            wake: Notify::new(),
            events: tx,
            dropped: AtomicU64::new(0),
            sockets,
            max_backlog: usize::try_from(options.max_backlog_bytes).unwrap_or(usize::MAX),
        });
        {
            let mut s = inner.lock();
            inner.drain(&mut s);
        }
        let task = tokio::spawn(run(inner.clone()));
        Ok((TaskPeer { inner, task }, rx))
    }

    /// The local addresses the peer listens on (its host candidates).
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        self.inner.sockets.iter().map(|(a, _)| *a).collect()
    }

    /// A data-only offer (one `m=application`, the host candidates in it).
    pub fn create_offer(&self) -> Result<String, PeerError> {
        let mut s = self.inner.lock();
        let (placeholder, offer, pending) = make_offer(&mut s.rtc)?;
        s.placeholder = Some(placeholder);
        s.pending = Some(pending);
        self.inner.drain(&mut s);
        drop(s);
        self.inner.wake.notify_one();
        Ok(offer)
    }

    /// Applies the remote answer to [`TaskPeer::create_offer`]'s offer, then reports the host
    /// candidates (also in the offer) as [`PeerEvent::LocalCandidate`] for sides that trickle.
    pub fn accept_answer(&self, answer: &str) -> Result<(), PeerError> {
        let mut s = self.inner.lock();
        let Some(pending) = s.pending.take() else {
            return Err(PeerError::Sdp("an answer without an offer".into()));
        };
        apply_answer(&mut s.rtc, pending, answer)?;
        self.inner.drain(&mut s);
        drop(s);
        for (addr, _) in &self.inner.sockets {
            if let Ok(c) = host_candidate(*addr) {
                self.inner.emit(PeerEvent::LocalCandidate {
                    sdp_mline_index: 0,
                    candidate: c.to_sdp_string(),
                });
            }
        }
        self.inner.emit(PeerEvent::GatheringDone);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// A remote ICE candidate (`candidate:…`, with or without an `a=` prefix). TCP candidates
    /// and unparsable lines are skipped: this peer speaks UDP.
    pub fn add_remote_candidate(&self, _sdp_mline_index: u32, candidate: &str) {
        let Some(c) = parse_remote_candidate(candidate) else {
            debug!(peer = %self.inner.name, candidate, "remote candidate skipped (not UDP, or not a candidate)");
            return;
        };
        let mut s = self.inner.lock();
        if s.over {
            return;
        }
        s.rtc.add_remote_candidate(c);
        self.inner.drain(&mut s);
        drop(s);
        self.inner.wake.notify_one();
    }

    /// Sends a text message on the most recently opened channel, unless more than
    /// `max_backlog_bytes` wait in SCTP already (then [`SendError::Backlog`]: the caller drops it).
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        let mut s = self.inner.lock();
        if s.over {
            return Err(SendError::NotOpen);
        }
        let Some(&(id, _)) = s.channels.last() else {
            return Err(SendError::NotOpen);
        };
        let max_backlog = self.inner.max_backlog;
        let outcome = match s.rtc.channel(id) {
            None => Err(SendError::NotOpen),
            Some(mut ch) => {
                if ch.buffered_amount() > max_backlog {
                    Err(SendError::Backlog)
                } else {
                    match ch.write(false, text.as_bytes()) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(SendError::Backlog),
                        Err(_) => Err(SendError::Refused),
                    }
                }
            }
        };
        self.inner.drain(&mut s);
        drop(s);
        self.inner.wake.notify_one();
        outcome
    }

    /// Events dropped because the receiver was full.
    pub fn dropped_events(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

/// A state machine with the process's certificate. str0m's builder panics when its DTLS cannot
/// start; that is turned into an error here.
fn new_rtc() -> Result<Rtc, PeerError> {
    static CRYPTO: std::sync::OnceLock<std::sync::Arc<str0m::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    let crypto = CRYPTO
        .get_or_init(|| std::sync::Arc::new(crate::dtls::crypto_provider()))
        .clone();
    let cert = shared_certificate()?;
    std::panic::catch_unwind(move || {
        Rtc::builder()
            .set_crypto_provider(crypto)
            .set_dtls_cert(cert)
            .build(Instant::now())
    })
    .map_err(|_| PeerError::Dtls("the DTLS stack did not start".into()))
}

fn host_candidate(addr: SocketAddr) -> Result<Candidate, PeerError> {
    Candidate::host(addr, "udp").map_err(|e| PeerError::Network(e.to_string()))
}

/// The data-only offer: one pre-negotiated channel puts `m=application` in it (no DCEP, never
/// used). Returns the placeholder's id, the offer's text and what the answer completes.
fn make_offer(rtc: &mut Rtc) -> Result<(ChannelId, String, SdpPendingOffer), PeerError> {
    let mut api = rtc.sdp_api();
    let placeholder = api.add_channel_with_config(ChannelConfig {
        label: crate::SDP_PLACEHOLDER_LABEL.into(),
        ordered: true,
        negotiated: Some(SDP_PLACEHOLDER_STREAM as u16),
        ..Default::default()
    });
    let Some((offer, pending)) = api.apply() else {
        return Err(PeerError::Sdp("nothing to offer".into()));
    };
    Ok((placeholder, offer.to_sdp_string(), pending))
}

/// Parses the remote answer and applies it to the pending offer.
fn apply_answer(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) -> Result<(), PeerError> {
    let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| PeerError::Sdp(e.to_string()))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| PeerError::Sdp(e.to_string()))
}

/// A remote candidate line (`candidate:…`, with or without `a=`) when it is a UDP one.
fn parse_remote_candidate(line: &str) -> Option<Candidate> {
    let line = line.trim().trim_start_matches("a=");
    Candidate::from_sdp_string(line)
        .ok()
        .filter(|c| c.proto() == Protocol::Udp)
}

/// What a [`TaskPeer`] does with a remote answer and remote candidates, without sockets or a
/// task: offer, accept the answer `answer_for(offer)`, add the candidates, run the state
/// machine's output dry. For hostile-input testing (the answer and candidates come from KMS):
/// `Err` for what is refused, never a panic.
pub fn negotiate_offline(
    answer_for: impl FnOnce(&str) -> String,
    candidates: &[&str],
) -> Result<(), PeerError> {
    let mut rtc = new_rtc()?;
    rtc.add_local_candidate(host_candidate(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        9,
    ))?);
    let (_, offer, pending) = make_offer(&mut rtc)?;
    apply_answer(&mut rtc, pending, &answer_for(&offer))?;
    for c in candidates.iter().filter_map(|c| parse_remote_candidate(c)) {
        rtc.add_remote_candidate(c);
    }
    for _ in 0..64 {
        match rtc.poll_output() {
            Ok(Output::Timeout(_)) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(PeerError::Sdp(e.to_string())),
        }
    }
    Ok(())
}

/// The process's DTLS certificate (ECDSA P-256), made once: every peer presents it, as a browser
/// reuses its certificate across connections; each session's fingerprint is in its own SDP.
/// Generating one per peer cost a key generation per participant at setup.
fn shared_certificate() -> Result<str0m::config::DtlsCert, PeerError> {
    static CERT: std::sync::OnceLock<Option<str0m::config::DtlsCert>> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    })
    .clone()
    .ok_or_else(|| PeerError::Dtls("no DTLS certificate could be generated".into()))
}

/// The peer's task: feeds datagrams and timeouts to the state machine until it is over.
async fn run(inner: Arc<Inner>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let deadline = {
            let mut s = inner.lock();
            if s.over {
                return;
            }
            let give_up_at = s.disconnected_since.map(|t| t + DISCONNECTED_GIVE_UP);
            if give_up_at.is_some_and(|t| Instant::now() >= t) {
                inner.give_up(&mut s, "failed");
                return;
            }
            let at = give_up_at.map_or(s.next_timeout, |g| g.min(s.next_timeout));
            // A deadline already past is handled after 1 ms, not in a spin (as str0m's examples
            // clamp theirs): packets still wake the task at once.
            at.max(Instant::now() + Duration::from_millis(1))
        };
        tokio::select! {
            got = recv_any(&inner.sockets, &mut buf) => {
                let Ok((n, source, destination)) = got else { continue };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(
                    Instant::now(),
                    Receive { proto: Protocol::Udp, source, destination, contents },
                );
                let mut s = inner.lock();
                if s.over {
                    return;
                }
                if s.rtc.accepts(&input) {
                    if let Err(e) = s.rtc.handle_input(input) {
                        debug!(peer = %inner.name, error = %e, "datagram refused");
                    }
                    inner.drain(&mut s);
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                let mut s = inner.lock();
                if s.over {
                    return;
                }
                if let Err(e) = s.rtc.handle_input(Input::Timeout(Instant::now())) {
                    debug!(peer = %inner.name, error = %e, "timeout handling failed");
                }
                inner.drain(&mut s);
            }
            _ = inner.wake.notified() => {}
        }
    }
}

/// The next datagram on any of the sockets: (length, from, the local address it came to).
async fn recv_any(
    sockets: &[(SocketAddr, UdpSocket)],
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, SocketAddr)> {
    poll_fn(|cx| {
        for (local, socket) in sockets {
            let mut rb = ReadBuf::new(&mut *buf);
            match socket.poll_recv_from(cx, &mut rb) {
                Poll::Ready(Ok(from)) => return Poll::Ready(Ok((rb.filled().len(), from, *local))),
                // An ICMP error from an earlier send (Linux reports it on the next receive).
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Binds a UDP socket on `ip`, on a port of `range` when given (tried from a random start).
fn bind_udp(ip: IpAddr, range: Option<(u16, u16)>) -> std::io::Result<(SocketAddr, UdpSocket)> {
    let bind = |port: u16| -> std::io::Result<(SocketAddr, UdpSocket)> {
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
        std_socket.set_nonblocking(true)?;
        let addr = std_socket.local_addr()?;
        Ok((addr, UdpSocket::from_std(std_socket)?))
    };
    let Some((lo, hi)) = range else {
        return bind(0);
    };
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let span = u32::from(hi - lo) + 1;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let start = (std::process::id() ^ nanos) % span;
    let mut last = std::io::Error::new(std::io::ErrorKind::AddrInUse, "no port in range");
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        match bind(port) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The host's IPv4 addresses that can carry ICE: every interface's, link-local ones left out,
/// loopback last (a KMS on this host in no namespace reaches us there).
pub fn local_ipv4_addresses() -> Vec<IpAddr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    // SAFETY: getifaddrs fills a list we only read and then free with freeifaddrs.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
            if up
                && !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    order_addresses(out)
}

/// Link-local out, duplicates out, loopback last (pure: tested).
fn order_addresses(mut v: Vec<Ipv4Addr>) -> Vec<IpAddr> {
    v.retain(|a| !a.is_link_local() && !a.is_unspecified());
    v.sort_by_key(|a| (a.is_loopback(), *a));
    v.dedup();
    if v.is_empty() {
        v.push(Ipv4Addr::LOCALHOST);
    }
    v.into_iter().map(IpAddr::V4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_leave_link_local_out_and_loopback_last() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            order_addresses(vec![
                a("127.0.0.1"),
                a("169.254.1.2"),
                a("10.0.0.2"),
                a("10.0.0.2")
            ]),
            vec![IpAddr::V4(a("10.0.0.2")), IpAddr::V4(a("127.0.0.1"))]
        );
        assert_eq!(
            order_addresses(vec![]),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert!(local_ipv4_addresses().iter().all(|a| a.is_ipv4()));
    }
}
