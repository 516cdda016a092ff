//! Rooms and participants on KMS, as the Java tutorial's `Room`, `UserSession` and `CallHandler` do.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use kurento_client::prelude::*;
use kurento_client::KurentoClient;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use crate::Opts;

pub struct App {
    kms: KurentoClient,
    opts: Opts,
    rooms: Mutex<HashMap<String, Room>>,
}

struct Room {
    pipeline: MediaPipeline,
    users: HashMap<String, User>,
    /// The KMS connection generation the room was made in: a restart forgets only older rooms
    /// (the restart may be noticed after a new room was already made on the new server).
    generation: u64,
}

/// The KMS connection's generation now (increases with every (re)connection).
fn generation(kms: &KurentoClient) -> u64 {
    match &*kms.state().borrow() {
        kurento_client::ConnectionState::Connected { generation, .. } => *generation,
        _ => 0,
    }
}

struct User {
    /// The signalling connection that joined (a reloaded page joins again on a new one before
    /// its old one is seen closing: the newer wins, the older's late messages are ignored).
    conn: u64,
    tx: mpsc::Sender<String>,
    outgoing: WebRtcEndpoint,
    /// OpenVidu shape: the PassThrough every subscriber hangs from, the connection and stream ids.
    openvidu: Option<OpenViduStream>,
    /// OpenVidu shape: a screen share (`str_SCR_…`), its endpoint and PassThrough.
    screen: Option<(WebRtcEndpoint, OpenViduStream)>,
    /// Subscriber endpoints, by the name of the participant they show.
    incoming: HashMap<String, WebRtcEndpoint>,
    /// ICE candidate forwarders of this user's endpoints.
    forwarders: Vec<JoinHandle<()>>,
}

impl User {
    fn send(&self, msg: Value) {
        // A browser that stopped reading loses signalling messages, never blocks the room.
        let _ = self.tx.try_send(msg.to_string());
    }
}

/// Who a signalling connection is, once joined.
struct Joined {
    room: String,
    name: String,
    conn: u64,
}

static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A publisher as openvidu-server 2.x holds it (`PublisherEndpoint`).
struct OpenViduStream {
    passthrough: PassThrough,
    connection: String,
    stream: String,
    /// Answered once: a later offer is a reconnect (a new endpoint on the same PassThrough).
    published: bool,
    /// A filter inserted between the endpoint and the PassThrough (`applyFilter`).
    filter: Option<GStreamerFilter>,
}

/// `n` random alphanumerics.
fn alnum(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| CHARS[fastrand::usize(..CHARS.len())] as char)
        .collect()
}

impl App {
    pub fn new(kms: KurentoClient, opts: Opts) -> Arc<Self> {
        let app = Arc::new(App {
            kms,
            opts,
            rooms: Mutex::default(),
        });
        tokio::spawn(forget_rooms_when_kms_restarts(Arc::downgrade(&app)));
        app
    }

    /// What openvidu-server can do to a publisher from the server side (`--openvidu-shape`):
    /// `mute`/`unmute` its video (disconnect it from / reconnect it to its PassThrough, as
    /// `PublisherEndpoint.mute` does) and `filter` (insert a GStreamerFilter between the endpoint
    /// and the PassThrough, as `applyFilter` does). Returns an HTTP status.
    pub async fn openvidu_admin(&self, action: &str, room: &str, name: &str) -> u16 {
        let mut rooms = self.rooms.lock().await;
        let Some(r) = rooms.get_mut(room) else {
            return 404;
        };
        let pipeline = r.pipeline.clone();
        let Some(u) = r.users.get_mut(name) else {
            return 404;
        };
        let outgoing = u.outgoing.clone();
        let Some(o) = u.openvidu.as_mut() else {
            return 404;
        };
        let upstream: MediaElement = match &o.filter {
            Some(f) => f.clone().upcast(),
            None => outgoing.clone().upcast(),
        };
        let done = match action {
            "mute" => upstream.disconnect(&o.passthrough, MediaType::Video).await,
            "unmute" => upstream.connect(&o.passthrough, MediaType::Video).await,
            "filter" if o.filter.is_none() => {
                let f =
                    match GStreamerFilter::builder(&pipeline, "videoflip method=horizontal-flip")
                        .await
                    {
                        Ok(f) => f,
                        Err(e) => {
                            warn!(error = %e, "cannot make the filter");
                            return 500;
                        }
                    };
                let mut step = outgoing.disconnect(&o.passthrough, MediaType::Video).await;
                if step.is_ok() {
                    step = outgoing.connect(&f, MediaType::Video).await;
                }
                if step.is_ok() {
                    step = f.connect(&o.passthrough, MediaType::Video).await;
                }
                o.filter = Some(f);
                step
            }
            _ => return 400,
        };
        match done {
            Ok(()) => {
                info!(room, name, action, "server-side change to a publisher");
                200
            }
            Err(e) => {
                warn!(room, name, action, error = %e, "server-side change failed");
                500
            }
        }
    }

    /// OpenVidu's REST surface for the sessions this app holds (`--openvidu-shape`): `GET
    /// /openvidu/api/sessions` and `POST /openvidu/api/signal`, Basic auth `OPENVIDUAPP:<secret>`.
    /// Returns (HTTP status, JSON body).
    pub async fn openvidu_rest(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        let Some(secret) = self.opts.openvidu_secret.as_deref() else {
            return (404, "{}".into());
        };
        use base64::Engine as _;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("OPENVIDUAPP:{secret}"))
        );
        if auth != Some(want.as_str()) {
            return (401, "{}".into());
        }
        let rooms = self.rooms.lock().await;
        let route = path.split('?').next().unwrap_or_default();
        match (method, route) {
            ("GET", "/openvidu/api/sessions") => {
                let content: Vec<Value> = rooms
                    .iter()
                    .map(|(id, r)| {
                        let conns: Vec<Value> = r
                            .users
                            .iter()
                            .filter_map(|(name, u)| {
                                let o = u.openvidu.as_ref()?;
                                let mut publishers = vec![json!({"streamId": o.stream, "createdAt": 0,
                                    "mediaOptions": {"hasAudio": true, "hasVideo": true, "typeOfVideo": "CAMERA"}})];
                                if let Some((_, s)) = &u.screen {
                                    publishers.push(json!({"streamId": s.stream, "createdAt": 0,
                                        "mediaOptions": {"hasAudio": false, "hasVideo": true, "typeOfVideo": "SCREEN"}}));
                                }
                                Some(json!({
                                    "id": o.connection, "object": "connection", "status": "active",
                                    "type": "WEBRTC", "clientData": json!({"clientData": name}).to_string(),
                                    "publishers": publishers,
                                    "subscribers": [],
                                }))
                            })
                            .collect();
                        json!({"id": id, "object": "session", "connections":
                            {"numberOfElements": conns.len(), "content": conns}})
                    })
                    .collect();
                (
                    200,
                    json!({"numberOfElements": content.len(), "content": content}).to_string(),
                )
            }
            ("POST", "/openvidu/api/signal") => {
                let Ok(req) = serde_json::from_slice::<Value>(body) else {
                    return (400, "{}".into());
                };
                let (Some(session), Some(data)) = (req["session"].as_str(), req.get("data")) else {
                    return (400, "{}".into());
                };
                let Some(r) = rooms.get(session) else {
                    return (404, "{}".into());
                };
                let to: Option<Vec<&str>> = req["to"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect());
                let targets: Vec<&User> = r
                    .users
                    .values()
                    .filter(|u| match (&to, &u.openvidu) {
                        (None, _) => true,
                        (Some(to), Some(o)) => to.contains(&o.connection.as_str()),
                        _ => false,
                    })
                    .collect();
                if targets.is_empty() {
                    return (406, "{}".into());
                }
                let kind = req["type"].as_str().unwrap_or("");
                for u in targets {
                    u.send(json!({"id": "signal", "type": format!("signal:{kind}"), "data": data}));
                }
                (200, "{}".into())
            }
            _ => (404, "{}".into()),
        }
    }

    async fn join(
        &self,
        room: &str,
        name: &str,
        presenter: bool,
        conn: u64,
        tx: mpsc::Sender<String>,
    ) -> anyhow::Result<()> {
        let mut rooms = self.rooms.lock().await;
        if !rooms.contains_key(room) {
            let pipeline = self.kms.create_pipeline().await?;
            if self.opts.tags {
                pipeline.add_tag("kurento-tap.room", room).await?;
            }
            info!(room, pipeline = pipeline.id(), "room created");
            rooms.insert(
                room.to_owned(),
                Room {
                    pipeline,
                    users: HashMap::new(),
                    generation: generation(&self.kms),
                },
            );
        }
        let r = rooms.get_mut(room).expect("inserted above");
        if r.users.contains_key(name) {
            // The same person again (a reload): their old connection is on its way out.
            info!(room, name, "joined again; the older connection is replaced");
            remove_user(r, name).await;
        }
        let outgoing = r
            .pipeline
            .create::<WebRtcEndpoint>()
            .use_data_channels(self.opts.data_channels && !self.opts.openvidu_shape)
            .await?;
        let openvidu = if self.opts.openvidu_shape {
            // KurentoParticipant / PublisherEndpoint: named after building, then a PassThrough.
            let connection = format!("con_{}{}", fastrand::uppercase(), alnum(9));
            let stream = format!("str_CAM_{}{}_{connection}", fastrand::uppercase(), alnum(3));
            outgoing.set_name(&stream).await?;
            let passthrough = r.pipeline.create::<PassThrough>().await?;
            outgoing.connect(&passthrough, ()).await?;
            Some(OpenViduStream {
                passthrough,
                connection,
                stream,
                published: false,
                filter: None,
            })
        } else {
            None
        };
        if self.opts.tags && openvidu.is_none() {
            outgoing.add_tag("kurento-tap.participant", name).await?;
            // The presenter is left out of the room mood and receives it (docs/integration.md).
            let role = if presenter { "presenter" } else { "publisher" };
            outgoing.add_tag("kurento-tap.role", role).await?;
        }
        let forwarder = forward_candidates(&outgoing, name, tx.clone()).await?;
        let others: Vec<String> = r.users.keys().cloned().collect();
        for u in r.users.values() {
            u.send(json!({"id": "newParticipantArrived", "name": name}));
        }
        let user = User {
            conn,
            tx,
            outgoing,
            openvidu,
            screen: None,
            incoming: HashMap::new(),
            forwarders: vec![forwarder],
        };
        user.send(json!({"id": "existingParticipants", "data": others}));
        info!(
            room,
            name,
            publisher = user.outgoing.id(),
            "participant joined"
        );
        r.users.insert(name.to_owned(), user);
        Ok(())
    }

    async fn receive_video_from(
        &self,
        who: &Joined,
        sender: &str,
        offer: &str,
    ) -> anyhow::Result<()> {
        let mut rooms = self.rooms.lock().await;
        let r = rooms
            .get_mut(&who.room)
            .ok_or_else(|| anyhow::anyhow!("no room"))?;
        if r.users.get(&who.name).is_none_or(|u| u.conn != who.conn) {
            anyhow::bail!("{} rejoined on another connection", who.name);
        }
        if sender == format!("{}:screen", who.name) && self.opts.openvidu_shape {
            // A second stream of the same connection: its own endpoint and PassThrough.
            let me = r.users.get_mut(&who.name).expect("joined");
            let connection = me
                .openvidu
                .as_ref()
                .map(|o| o.connection.clone())
                .unwrap_or_default();
            let ep = r.pipeline.create::<WebRtcEndpoint>().await?;
            let stream = format!("str_SCR_{}{}_{connection}", fastrand::uppercase(), alnum(3));
            ep.set_name(&stream).await?;
            let passthrough = r.pipeline.create::<PassThrough>().await?;
            ep.connect(&passthrough, ()).await?;
            let forwarder = forward_candidates(&ep, sender, me.tx.clone()).await?;
            me.forwarders.push(forwarder);
            me.screen = Some((
                ep.clone(),
                OpenViduStream {
                    passthrough,
                    connection,
                    stream,
                    published: true,
                    filter: None,
                },
            ));
            let answer = ep.process_offer(offer).await?;
            me.send(json!({"id": "receiveVideoAnswer", "name": sender, "sdpAnswer": answer}));
            ep.gather_candidates().await?;
            return Ok(());
        }
        let republish = sender == who.name
            && r.users[&who.name]
                .openvidu
                .as_ref()
                .is_some_and(|o| o.published);
        let endpoint = if republish {
            // OpenVidu's reconnect (KurentoSessionManager.reconnectPublisher): a new endpoint with
            // the same streamId onto the same PassThrough (or its filter); the old one released.
            let me = r.users.get_mut(&who.name).expect("joined");
            let o = me.openvidu.as_ref().expect("openvidu shape");
            let ep = r.pipeline.create::<WebRtcEndpoint>().await?;
            ep.set_name(&o.stream).await?;
            match &o.filter {
                Some(f) => ep.connect(f, ()).await?,
                None => ep.connect(&o.passthrough, ()).await?,
            }
            let forwarder = forward_candidates(&ep, &who.name, me.tx.clone()).await?;
            me.forwarders.push(forwarder);
            let old = std::mem::replace(&mut me.outgoing, ep.clone());
            let _ = old.release().await;
            info!(room = %who.room, name = %who.name, "publisher reconnected onto its PassThrough");
            ep
        } else if sender == who.name {
            // The tutorial answers the browser's sendonly offer with the publisher itself.
            if let Some(o) = r.users.get_mut(&who.name).and_then(|u| u.openvidu.as_mut()) {
                o.published = true;
            }
            r.users[&who.name].outgoing.clone()
        } else {
            let source_user = r
                .users
                .get(sender)
                .ok_or_else(|| anyhow::anyhow!("{sender} is not in the room"))?;
            let source = source_user.outgoing.clone();
            let source_ov = source_user
                .openvidu
                .as_ref()
                .map(|o| (o.passthrough.clone(), o.stream.clone()));
            let existing = r.users[&who.name].incoming.get(sender).cloned();
            match existing {
                Some(ep) => ep,
                None => {
                    let ep = r.pipeline.create::<WebRtcEndpoint>().await?;
                    let tx = r.users[&who.name].tx.clone();
                    let forwarder = forward_candidates(&ep, sender, tx).await?;
                    match (&source_ov, &r.users[&who.name].openvidu) {
                        // SubscriberEndpoint: named `<subscriber connection>_<streamId>`, fed
                        // from the publisher's PassThrough.
                        (Some((passthrough, stream)), Some(me)) => {
                            ep.set_name(&format!("{}_{stream}", me.connection)).await?;
                            passthrough.connect(&ep, ()).await?;
                        }
                        _ => source.connect(&ep, ()).await?,
                    }
                    let me = r.users.get_mut(&who.name).expect("joined");
                    me.forwarders.push(forwarder);
                    me.incoming.insert(sender.to_owned(), ep.clone());
                    ep
                }
            }
        };
        let answer = endpoint.process_offer(offer).await?;
        r.users[&who.name]
            .send(json!({"id": "receiveVideoAnswer", "name": sender, "sdpAnswer": answer}));
        endpoint.gather_candidates().await?;
        Ok(())
    }

    async fn add_candidate(
        &self,
        who: &Joined,
        name: &str,
        candidate: &Value,
    ) -> anyhow::Result<()> {
        let candidate = IceCandidate {
            candidate: candidate["candidate"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            sdp_mid: candidate["sdpMid"].as_str().unwrap_or_default().to_owned(),
            sdp_m_line_index: candidate["sdpMLineIndex"].as_i64().unwrap_or(0) as i32,
        };
        let endpoint = {
            let rooms = self.rooms.lock().await;
            let Some(me) = rooms
                .get(&who.room)
                .and_then(|r| r.users.get(&who.name))
                .filter(|u| u.conn == who.conn)
            else {
                return Ok(());
            };
            if name == who.name {
                Some(me.outgoing.clone())
            } else if name == format!("{}:screen", who.name) {
                me.screen.as_ref().map(|(ep, _)| ep.clone())
            } else {
                me.incoming.get(name).cloned()
            }
        };
        if let Some(ep) = endpoint {
            ep.add_ice_candidate(&candidate).await?;
        }
        Ok(())
    }

    async fn leave(&self, who: &Joined) {
        let mut rooms = self.rooms.lock().await;
        let Some(r) = rooms.get_mut(&who.room) else {
            return;
        };
        // Replaced by a newer connection of the same person: nothing of ours to leave.
        if r.users.get(&who.name).is_none_or(|u| u.conn != who.conn) {
            return;
        }
        remove_user(r, &who.name).await;
        info!(room = %who.room, name = %who.name, "participant left");
        if r.users.is_empty() {
            let _ = r.pipeline.release().await;
            rooms.remove(&who.room);
            info!(room = %who.room, "room closed");
        }
    }
}

/// Takes `name` out of the room: their endpoints and the others' subscriber endpoints for them are
/// released, the others told.
async fn remove_user(r: &mut Room, name: &str) {
    let Some(user) = r.users.remove(name) else {
        return;
    };
    for f in &user.forwarders {
        f.abort();
    }
    for other in r.users.values_mut() {
        other.send(json!({"id": "participantLeft", "name": name}));
        if let Some(ep) = other.incoming.remove(name) {
            let _ = ep.release().await;
        }
    }
    for ep in user.incoming.values() {
        let _ = ep.release().await;
    }
    let _ = user.outgoing.release().await;
    if let Some((ep, o)) = &user.screen {
        let _ = ep.release().await;
        let _ = o.passthrough.release().await;
    }
    if let Some(o) = &user.openvidu {
        if let Some(f) = &o.filter {
            let _ = f.release().await;
        }
        let _ = o.passthrough.release().await;
    }
}

/// A restarted KMS has none of the rooms' objects: tell everyone, and start afresh (as an app's
/// `KurentoClient` reconnection handler would).
async fn forget_rooms_when_kms_restarts(app: std::sync::Weak<App>) {
    let Some(mut state) = app.upgrade().map(|a| a.kms.state()) else {
        return;
    };
    while state.changed().await.is_ok() {
        let restarted = match &*state.borrow_and_update() {
            kurento_client::ConnectionState::Connected {
                recovery: kurento_client::Recovery::NewServer,
                generation,
                ..
            } => Some(*generation),
            _ => None,
        };
        let Some(app) = app.upgrade() else { return };
        if let Some(current) = restarted {
            let mut rooms = app.rooms.lock().await;
            let gone: Vec<String> = rooms
                .iter()
                .filter(|(_, r)| r.generation < current)
                .map(|(name, _)| name.clone())
                .collect();
            warn!(
                rooms = gone.len(),
                "KMS restarted: the rooms made before are gone"
            );
            for name in gone {
                let Some(r) = rooms.remove(&name) else {
                    continue;
                };
                for u in r.users.values() {
                    u.send(json!({"id": "error", "message": "media server restarted"}));
                    for f in &u.forwarders {
                        f.abort();
                    }
                }
            }
        }
    }
}

/// Sends every candidate KMS finds for `ep` to the browser, as the tutorial's `iceCandidate`.
async fn forward_candidates(
    ep: &WebRtcEndpoint,
    name: &str,
    tx: mpsc::Sender<String>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut events = ep.on::<IceCandidateFound>().await?;
    let name = name.to_owned();
    Ok(tokio::spawn(async move {
        while let Some(Ok(ev)) = events.recv().await {
            let msg = json!({"id": "iceCandidate", "name": name, "candidate": {
                "candidate": ev.candidate.candidate,
                "sdpMid": ev.candidate.sdp_mid,
                "sdpMLineIndex": ev.candidate.sdp_m_line_index,
            }});
            let _ = tx.try_send(msg.to_string());
        }
    }))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One browser's signalling connection; leaving the room when it closes.
pub async fn session(app: Arc<App>, ws: Ws) {
    let (mut write, mut read) = ws.split();
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if write.send(Message::text(m)).await.is_err() {
                break;
            }
        }
    });
    let mut joined: Option<Joined> = None;
    let conn = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    while let Some(Ok(msg)) = read.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(m) = serde_json::from_str::<Value>(text.as_str()) else {
            warn!("unparsable signalling message");
            continue;
        };
        let result = match (m["id"].as_str().unwrap_or_default(), &joined) {
            ("joinRoom", None) => {
                let room = m["room"].as_str().unwrap_or("default").to_owned();
                let name = m["name"].as_str().unwrap_or_default().to_owned();
                let presenter = m["presenter"].as_bool().unwrap_or(false);
                let r = app.join(&room, &name, presenter, conn, tx.clone()).await;
                if r.is_ok() {
                    joined = Some(Joined { room, name, conn });
                }
                r
            }
            ("receiveVideoFrom", Some(who)) => {
                app.receive_video_from(
                    who,
                    m["sender"].as_str().unwrap_or_default(),
                    m["sdpOffer"].as_str().unwrap_or_default(),
                )
                .await
            }
            ("onIceCandidate", Some(who)) => {
                app.add_candidate(who, m["name"].as_str().unwrap_or_default(), &m["candidate"])
                    .await
            }
            ("leaveRoom", Some(who)) => {
                app.leave(who).await;
                joined = None;
                Ok(())
            }
            (other, _) => Err(anyhow::anyhow!("unexpected message {other}")),
        };
        if let Err(e) = result {
            warn!(error = %e, "signalling request failed");
            let _ = tx.try_send(json!({"id": "error", "message": e.to_string()}).to_string());
        }
    }
    if let Some(who) = joined {
        app.leave(&who).await;
    }
    writer.abort();
}
