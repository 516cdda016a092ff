//! DTLS 1.2 on OpenSSL for the DataChannel peer: one `SSL_CTX` per process, record buffers
//! released while a connection is idle.
//!
//! Why not str0m's own OpenSSL back-end: it builds an `SSL_CTX` per connection (parsing the
//! certificate and key each time) and keeps OpenSSL's two 16 KB record buffers for the
//! connection's whole life. The daemon holds one mostly idle DataChannel per tapped participant
//! (a few small messages a second), so those buffers were ~38 KB of every participant's memory
//! (docs/benchmarks.md, "Where a DataChannel peer's memory goes"). Here every connection shares
//! one context made from the process's certificate (as a browser reuses its own), and
//! `SSL_MODE_RELEASE_BUFFERS` frees the buffers between records.
//!
//! The connection itself is OpenSSL's state machine driven through an in-memory transport:
//! datagrams from the socket are handed in, records to send are collected, and str0m's
//! `DtlsInstance` contract (what to poll, in which order) is kept.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openssl::pkey::PKey;
use openssl::srtp::SrtpProfileId;
use openssl::ssl::{
    ErrorCode, HandshakeError, MidHandshakeSslStream, ShutdownState, Ssl, SslContext,
    SslContextBuilder, SslMethod, SslMode, SslOptions, SslStream, SslVerifyMode,
};
use openssl::x509::X509;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, KeyingMaterial,
    ProtocolVersion, SrtpProfile,
};
use str0m::crypto::CryptoProvider;
use str0m_proto::crypto::dtls::{DtlsCryptoError, DtlsCryptoOperation};
use str0m_proto::crypto::CryptoError;

/// The crypto provider the peers use: str0m's OpenSSL provider for everything but DTLS.
pub(crate) fn crypto_provider() -> CryptoProvider {
    let mut provider = str0m::crypto::from_feature_flags();
    provider.dtls_provider = &SHARED_CONTEXT_DTLS;
    provider
}

static SHARED_CONTEXT_DTLS: SharedContextDtls = SharedContextDtls;

/// What DTLS-SRTP asks the exporter for (RFC 5764).
const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";
const CIPHERS: &str = "ECDHE+AESGCM:DHE+AESGCM:ECDHE+AES256:DHE+AES256";
/// How often a handshake is looked at while it waits (OpenSSL resends its flight when its own
/// timer, 1 s doubling, has run out).
const HANDSHAKE_TICK: Duration = Duration::from_millis(250);
/// The largest DTLS record's plaintext.
const MAX_RECORD: usize = 16_384;
/// Incoming bytes not consumed yet: a datagram is ~1.2 KB; more than this is a stuck connection.
const MAX_PENDING_INPUT: usize = 64 * 1024;

struct SharedContextDtls;

impl std::fmt::Debug for SharedContextDtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedContextDtls")
    }
}

impl DtlsProvider for SharedContextDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        _now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        if !matches!(dtls_version, DtlsVersion::Dtls12) {
            return Err(CryptoError::Other(format!(
                "DTLS {dtls_version} is not offered: the DataChannel peer speaks DTLS 1.2"
            )));
        }
        let context = shared_context(cert)?;
        let mut ssl = Ssl::new(&context)?;
        // str0m sizes datagrams to its MTU target; OpenSSL must not query the socket for one.
        ssl.set_mtu(mtu.unwrap_or(1150) as u32)?;
        Ok(Box::new(Connection::new(ssl)))
    }
}

/// The context for `cert`, made once: a process presents one certificate.
fn shared_context(cert: &DtlsCert) -> Result<SslContext, CryptoError> {
    static CONTEXT: Mutex<Option<(Vec<u8>, SslContext)>> = Mutex::new(None);
    let mut made = CONTEXT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((der, context)) = &*made {
        if *der == cert.certificate {
            return Ok(context.clone());
        }
    }
    let context = build_context(cert)?;
    *made = Some((cert.certificate.clone(), context.clone()));
    Ok(context)
}

fn build_context(cert: &DtlsCert) -> Result<SslContext, CryptoError> {
    let mut ctx = SslContextBuilder::new(SslMethod::dtls())?;
    ctx.set_cipher_list(CIPHERS)?;
    let profiles: Vec<&str> = SrtpProfile::ALL
        .iter()
        .map(|p| openssl_srtp_name(*p))
        .collect();
    ctx.set_tlsext_use_srtp(&profiles.join(":"))?;
    // The peer's certificate is checked against the fingerprint in its SDP by str0m (it gets the
    // DER below), not against a CA: WebRTC certificates are self-signed.
    ctx.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |_, _| true,
    );
    let key = PKey::private_key_from_der(&cert.private_key)?;
    let certificate = X509::from_der(&cert.certificate)?;
    ctx.set_private_key(&key)?;
    ctx.set_certificate(&certificate)?;
    ctx.set_options(SslOptions::SINGLE_ECDH_USE | SslOptions::NO_DTLSV1 | SslOptions::NO_QUERY_MTU);
    ctx.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(ctx.build())
}

fn openssl_srtp_name(profile: SrtpProfile) -> &'static str {
    match profile {
        SrtpProfile::AEAD_AES_256_GCM => "SRTP_AEAD_AES_256_GCM",
        SrtpProfile::AEAD_AES_128_GCM => "SRTP_AEAD_AES_128_GCM",
        _ => "SRTP_AES128_CM_SHA1_80",
    }
}

fn srtp_profile(id: SrtpProfileId) -> Option<SrtpProfile> {
    match id {
        SrtpProfileId::SRTP_AES128_CM_SHA1_80 => Some(SrtpProfile::AES128_CM_SHA1_80),
        SrtpProfileId::SRTP_AEAD_AES_128_GCM => Some(SrtpProfile::AEAD_AES_128_GCM),
        SrtpProfileId::SRTP_AEAD_AES_256_GCM => Some(SrtpProfile::AEAD_AES_256_GCM),
        _ => None,
    }
}

/// `bytes` copied into the caller's buffer as `output`, or how large a buffer they need.
fn copy_out<'a>(
    buf: &'a mut [u8],
    bytes: &[u8],
    output: fn(&'a [u8]) -> DtlsOutput<'a>,
) -> DtlsOutput<'a> {
    match buf.get_mut(..bytes.len()) {
        Some(to) => {
            to.copy_from_slice(bytes);
            output(to)
        }
        None => DtlsOutput::BufferTooSmall {
            needed: bytes.len(),
        },
    }
}

fn fits(output: &DtlsOutput<'_>) -> bool {
    !matches!(output, DtlsOutput::BufferTooSmall { .. })
}

fn failed(operation: DtlsCryptoOperation) -> DtlsImplError {
    DtlsImplError::CryptoError(DtlsCryptoError::OperationFailed(operation))
}

/// The in-memory transport OpenSSL reads datagrams from and writes records to.
#[derive(Default)]
struct Wire {
    incoming: VecDeque<u8>,
    outgoing: VecDeque<Vec<u8>>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.incoming.len());
        for (to, from) in buf.iter_mut().zip(self.incoming.drain(..n)) {
            *to = from;
        }
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Stage {
    /// Before the role is known.
    Ready(Ssl, Wire),
    Handshaking(MidHandshakeSslStream<Wire>),
    Established(SslStream<Wire>),
    /// The handshake failed; nothing more happens.
    Failed(Wire),
    /// Only while moving between stages.
    Moving,
}

/// One DTLS association.
struct Connection {
    stage: Stage,
    active: Option<bool>,
    connected_reported: bool,
    peer_cert: Option<Vec<u8>>,
    keying: Option<(Vec<u8>, SrtpProfile)>,
    received: VecDeque<Vec<u8>>,
    /// Application data given before the handshake finished, sent when it has.
    waiting_to_send: VecDeque<Vec<u8>>,
    close_notify_received: bool,
    close_notify_reported: bool,
    close_notify_sent: bool,
    next_timeout: Option<Instant>,
}

impl Connection {
    fn new(ssl: Ssl) -> Self {
        Connection {
            stage: Stage::Ready(ssl, Wire::default()),
            active: None,
            connected_reported: false,
            peer_cert: None,
            keying: None,
            received: VecDeque::new(),
            waiting_to_send: VecDeque::new(),
            close_notify_received: false,
            close_notify_reported: false,
            close_notify_sent: false,
            next_timeout: None,
        }
    }

    fn wire(&mut self) -> Option<&mut Wire> {
        match &mut self.stage {
            Stage::Ready(_, wire) | Stage::Failed(wire) => Some(wire),
            Stage::Handshaking(mid) => Some(mid.get_mut()),
            Stage::Established(stream) => Some(stream.get_mut()),
            Stage::Moving => None,
        }
    }

    fn is_established(&self) -> bool {
        matches!(self.stage, Stage::Established(_))
    }

    /// Moves the handshake on as far as the input allows.
    fn drive_handshake(&mut self) -> Result<(), DtlsImplError> {
        let result = match std::mem::replace(&mut self.stage, Stage::Moving) {
            Stage::Ready(ssl, wire) => match self.active {
                Some(true) => ssl.connect(wire),
                Some(false) => ssl.accept(wire),
                None => {
                    // No role yet: keep the input for when it is set.
                    self.stage = Stage::Ready(ssl, wire);
                    return Ok(());
                }
            },
            Stage::Handshaking(mid) => mid.handshake(),
            other => {
                self.stage = other;
                return Ok(());
            }
        };
        match result {
            Ok(stream) => {
                let ssl = stream.ssl();
                let peer_cert = ssl.peer_certificate().and_then(|c| c.to_der().ok());
                let profile = ssl
                    .selected_srtp_profile()
                    .and_then(|p| srtp_profile(p.id()));
                let keying = profile.and_then(|profile| {
                    let mut material = vec![0u8; profile.keying_material_len()];
                    ssl.export_keying_material(&mut material, EXPORTER_LABEL, None)
                        .ok()
                        .map(|_| (material, profile))
                });
                self.stage = Stage::Established(stream);
                let (Some(peer_cert), Some(keying)) = (peer_cert, keying) else {
                    return Err(failed(DtlsCryptoOperation::DeriveExporterMasterSecret));
                };
                self.peer_cert = Some(peer_cert);
                self.keying = Some(keying);
                self.next_timeout = None;
                self.send_waiting()
            }
            Err(HandshakeError::WouldBlock(mid)) => {
                self.stage = Stage::Handshaking(mid);
                self.next_timeout = Some(Instant::now() + HANDSHAKE_TICK);
                Ok(())
            }
            Err(HandshakeError::Failure(mid)) => {
                tracing::debug!(error = %mid.error(), "DTLS handshake failed");
                self.stage = Stage::Failed(Wire::default());
                Err(failed(DtlsCryptoOperation::CompleteKeyExchange))
            }
            Err(HandshakeError::SetupFailure(e)) => {
                tracing::debug!(error = %e, "DTLS handshake could not start");
                self.stage = Stage::Failed(Wire::default());
                Err(failed(DtlsCryptoOperation::LoadPrivateKey))
            }
        }
    }

    fn send_waiting(&mut self) -> Result<(), DtlsImplError> {
        let Stage::Established(stream) = &mut self.stage else {
            return Ok(());
        };
        while let Some(data) = self.waiting_to_send.pop_front() {
            if stream.ssl_write(&data).is_err() {
                return Err(failed(DtlsCryptoOperation::Encrypt));
            }
        }
        Ok(())
    }

    /// Reads every record the input holds.
    fn read_records(&mut self) -> Result<(), DtlsImplError> {
        let Stage::Established(stream) = &mut self.stage else {
            return Ok(());
        };
        // On the stack: a buffer kept per connection would be the 16 KB released above.
        let mut buf = [0u8; MAX_RECORD];
        loop {
            match stream.ssl_read(&mut buf) {
                Ok(n) => self.received.push_back(buf[..n].to_vec()),
                Err(e) if e.code() == ErrorCode::WANT_READ => return Ok(()),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    if stream.get_shutdown().contains(ShutdownState::RECEIVED) {
                        self.close_notify_received = true;
                        if !self.close_notify_sent {
                            // Answer the peer's close_notify with ours (RFC 5246, 7.2.1).
                            let _ = stream.shutdown();
                            self.close_notify_sent = true;
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DTLS record refused");
                    return Err(failed(DtlsCryptoOperation::Decrypt));
                }
            }
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("active", &self.active)
            .field("established", &self.is_established())
            .finish()
    }
}

impl DtlsInstance for Connection {
    fn set_active(&mut self, active: bool) {
        self.active = Some(active);
        if active {
            // The client speaks first.
            let _ = self.drive_handshake();
        }
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        let Some(wire) = self.wire() else {
            return Err(DtlsImplError::ConnectionClosed);
        };
        if wire.incoming.len() + packet.len() > MAX_PENDING_INPUT {
            return Err(DtlsImplError::ReceiveQueueFull);
        }
        wire.incoming.extend(packet);
        match self.stage {
            Stage::Ready(..) | Stage::Handshaking(_) => self.drive_handshake()?,
            Stage::Failed(ref mut wire) => {
                wire.incoming.clear();
                return Err(DtlsImplError::ConnectionClosed);
            }
            _ => {}
        }
        // A flight may end with the first application records.
        self.read_records()
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        // What does not fit stays where it is for the next, larger, buffer.
        if let Some(wire) = self.wire() {
            if let Some(packet) = wire.outgoing.front() {
                let out = copy_out(buf, packet, DtlsOutput::Packet);
                if fits(&out) {
                    wire.outgoing.pop_front();
                }
                return out;
            }
        }
        if let Some(at) = self.next_timeout.take() {
            return DtlsOutput::Timeout(at);
        }
        if self.is_established() && !self.connected_reported {
            self.connected_reported = true;
            return DtlsOutput::Connected;
        }
        if let Some(cert) = &self.peer_cert {
            let out = copy_out(buf, cert, DtlsOutput::PeerCert);
            if fits(&out) {
                self.peer_cert = None;
            }
            return out;
        }
        if let Some((material, profile)) = self.keying.take() {
            return DtlsOutput::KeyingMaterial(KeyingMaterial::new(&material), profile);
        }
        if self.close_notify_received && !self.close_notify_reported {
            self.close_notify_reported = true;
            return DtlsOutput::CloseNotify;
        }
        if let Some(data) = self.received.front() {
            let out = copy_out(buf, data, DtlsOutput::ApplicationData);
            if fits(&out) {
                self.received.pop_front();
            }
            return out;
        }
        DtlsOutput::Timeout(Instant::now() + Duration::from_secs(3600))
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), DtlsImplError> {
        if matches!(self.stage, Stage::Handshaking(_)) {
            // OpenSSL resends its last flight here once its own timer has run out.
            self.drive_handshake()?;
        }
        Ok(())
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<(), DtlsImplError> {
        match &mut self.stage {
            Stage::Established(stream) => {
                stream
                    .ssl_write(data)
                    .map_err(|_| failed(DtlsCryptoOperation::Encrypt))?;
                Ok(())
            }
            Stage::Failed(_) => Err(DtlsImplError::ConnectionClosed),
            _ => {
                self.waiting_to_send.push_back(data.to_vec());
                Ok(())
            }
        }
    }

    fn is_active(&self) -> bool {
        self.active.unwrap_or(false)
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.is_established().then_some(ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        self.close_notify_sent || self.close_notify_received
    }

    fn is_closed(&self) -> bool {
        let drained = match &self.stage {
            Stage::Ready(_, wire) | Stage::Failed(wire) => wire.outgoing.is_empty(),
            Stage::Handshaking(mid) => mid.get_ref().outgoing.is_empty(),
            Stage::Established(stream) => stream.get_ref().outgoing.is_empty(),
            Stage::Moving => true,
        };
        self.close_notify_sent && drained
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        if let Stage::Established(stream) = &mut self.stage {
            let _ = stream.shutdown();
        }
        self.close_notify_sent = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        packets: Vec<Vec<u8>>,
        connected: bool,
        peer_cert: Option<Vec<u8>>,
        keying: Option<(Vec<u8>, SrtpProfile)>,
        data: Vec<Vec<u8>>,
        close_notify: bool,
    }

    fn drain(c: &mut dyn DtlsInstance) -> Seen {
        let mut seen = Seen::default();
        let mut buf = vec![0u8; 4096];
        for _ in 0..1000 {
            match c.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => seen.packets.push(p.to_vec()),
                DtlsOutput::Connected => seen.connected = true,
                DtlsOutput::PeerCert(der) => seen.peer_cert = Some(der.to_vec()),
                DtlsOutput::KeyingMaterial(k, p) => seen.keying = Some((k.to_vec(), p)),
                DtlsOutput::ApplicationData(d) => seen.data.push(d.to_vec()),
                DtlsOutput::CloseNotify => seen.close_notify = true,
                DtlsOutput::Timeout(at) if at > Instant::now() + Duration::from_secs(60) => {
                    return seen
                }
                _ => {}
            }
        }
        panic!("poll_output never ran dry");
    }

    fn pair() -> (Box<dyn DtlsInstance>, Box<dyn DtlsInstance>, DtlsCert) {
        let provider = &SHARED_CONTEXT_DTLS;
        let cert = provider.generate_certificate().expect("a certificate");
        let now = Instant::now();
        let client = provider
            .new_dtls(&cert, now, DtlsVersion::Dtls12, None)
            .unwrap();
        let server = provider
            .new_dtls(&cert, now, DtlsVersion::Dtls12, None)
            .unwrap();
        (client, server, cert)
    }

    // A handshake through memory: both sides connect, see each other's certificate, derive the
    // same SRTP keys, and records flow both ways, also those sent before the handshake ended.
    #[test]
    fn two_connections_shake_hands_and_exchange_records() {
        let (mut client, mut server, cert) = pair();
        server.set_active(false);
        client.set_active(true);
        server.send_application_data(b"early").unwrap();
        let (mut client_seen, mut server_seen) = (Seen::default(), Seen::default());
        let mut to_server = drain(client.as_mut()).packets;
        for _round in 0..10 {
            for p in to_server.drain(..) {
                server.handle_packet(&p).unwrap();
            }
            let s = drain(server.as_mut());
            server_seen.connected |= s.connected;
            server_seen.peer_cert = server_seen.peer_cert.or(s.peer_cert);
            server_seen.keying = server_seen.keying.or(s.keying);
            for p in s.packets {
                client.handle_packet(&p).unwrap();
            }
            let c = drain(client.as_mut());
            client_seen.connected |= c.connected;
            client_seen.peer_cert = client_seen.peer_cert.or(c.peer_cert);
            client_seen.keying = client_seen.keying.or(c.keying);
            client_seen.data.extend(c.data);
            to_server = c.packets;
            if client_seen.connected && server_seen.connected && to_server.is_empty() {
                break;
            }
        }
        assert!(client_seen.connected && server_seen.connected);
        assert_eq!(
            client_seen.peer_cert.as_deref(),
            Some(&cert.certificate[..])
        );
        assert_eq!(
            server_seen.peer_cert.as_deref(),
            Some(&cert.certificate[..])
        );
        let (client_keys, server_keys) = (client_seen.keying.unwrap(), server_seen.keying.unwrap());
        assert_eq!(client_keys, server_keys);
        assert_eq!(client_seen.data, vec![b"early".to_vec()]);
        assert_eq!(server.protocol_version(), Some(ProtocolVersion::DTLS1_2));

        client.send_application_data(b"hello").unwrap();
        for p in drain(client.as_mut()).packets {
            server.handle_packet(&p).unwrap();
        }
        assert_eq!(drain(server.as_mut()).data, vec![b"hello".to_vec()]);

        // A record changed on the way is refused, and the connection still works after it.
        client.send_application_data(b"again").unwrap();
        let mut packets = drain(client.as_mut()).packets;
        let mut forged = packets[0].clone();
        let last = forged.len() - 1;
        forged[last] ^= 0x55;
        let _ = server.handle_packet(&forged);
        assert!(drain(server.as_mut()).data.is_empty());
        server.handle_packet(&packets.remove(0)).unwrap();
        assert_eq!(drain(server.as_mut()).data, vec![b"again".to_vec()]);

        client.close().unwrap();
        for p in drain(client.as_mut()).packets {
            server.handle_packet(&p).unwrap();
        }
        assert!(drain(server.as_mut()).close_notify);
        assert!(server.is_closing());
    }

    // DTLS drops what it cannot read (RFC 6347, 4.1.2.7): junk is discarded without a panic, an
    // oversized backlog is refused, and a real client still connects afterwards.
    #[test]
    fn garbage_before_the_handshake_is_dropped_not_a_panic() {
        let (mut client, mut server, _) = pair();
        server.set_active(false);
        for n in 0..200u32 {
            let junk: Vec<u8> = (0..(n % 300)).map(|i| (i * 31 + n) as u8).collect();
            let _ = server.handle_packet(&junk);
            assert!(drain(server.as_mut()).data.is_empty());
        }
        assert!(server
            .handle_packet(&vec![0u8; MAX_PENDING_INPUT + 1])
            .is_err());
        client.set_active(true);
        let mut to_server = drain(client.as_mut()).packets;
        let mut connected = false;
        for _round in 0..10 {
            for p in to_server.drain(..) {
                let _ = server.handle_packet(&p);
            }
            for p in drain(server.as_mut()).packets {
                client.handle_packet(&p).unwrap();
            }
            let c = drain(client.as_mut());
            connected |= c.connected;
            to_server = c.packets;
        }
        assert!(connected);
    }

    #[test]
    fn a_record_too_large_for_the_buffer_waits_for_a_larger_one() {
        let (mut client, _, _) = pair();
        client.set_active(true);
        let mut small = [0u8; 10];
        let needed = match client.poll_output(&mut small) {
            DtlsOutput::BufferTooSmall { needed } => needed,
            _ => panic!("a ClientHello fits in 10 bytes?"),
        };
        let packets = drain(client.as_mut()).packets;
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].len(), needed);
    }

    #[test]
    fn one_context_serves_every_connection() {
        let (_, _, cert) = pair();
        let a = shared_context(&cert).unwrap();
        let b = shared_context(&cert).unwrap();
        let (a, b): (&openssl::ssl::SslContextRef, &openssl::ssl::SslContextRef) = (&a, &b);
        assert!(std::ptr::eq(a, b));
    }
}
