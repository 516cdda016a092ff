//! Rooms built the way openvidu-server 2.x builds a session (scenario `host = "openvidu"`; read in
//! OpenVidu v2.32.2, `openvidu-server/src/main/java/io/openvidu/server/kurento/`): one unnamed
//! pipeline, no tags; per published stream a WebRtcEndpoint **named after creation** with its
//! streamId (`str_<CAM|SCR>_<4 chars>_<connectionId>`, `KurentoParticipant.java`) and an unnamed
//! PassThrough it feeds (`PublisherEndpoint.java`); every subscriber's WebRtcEndpoint, named
//! `<subscriberConnectionId>_<streamId>`, hangs from that PassThrough (`SubscriberEndpoint.java`).
//! No DataChannels (`useDataChannels()` is commented out there).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::info;

use super::{obj_map, Kind, Link, MediaSet, PublisherMedia, Raised, WebRtc};
use crate::sdp;

/// What the simulator keeps of one OpenVidu participant, to undo it on leave.
#[derive(Debug, Clone)]
pub struct OpenViduParticipant {
    /// The session's pipeline.
    pub pipeline: String,
    /// `con_…`.
    pub connection: String,
    /// Its publisher endpoints (camera, and screen if shared).
    pub publishers: Vec<String>,
    /// Their PassThroughs.
    pub passthroughs: Vec<String>,
}

fn alnum(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| CHARS[fastrand::usize(..CHARS.len())] as char)
        .collect()
}

/// `con_` + one upper-case letter + 9 alphanumerics, as `SessionManager` makes them.
fn connection_id() -> String {
    format!("con_{}{}", fastrand::uppercase(), alnum(9))
}

/// `str_<TYP>_<one upper-case letter + 3 alphanumerics>_<connectionId>`.
fn stream_id(kind: &str, connection: &str) -> String {
    format!(
        "str_{kind}_{}{}_{connection}",
        fastrand::uppercase(),
        alnum(3)
    )
}

impl MediaSet {
    /// A participant joins an OpenVidu-shaped session: its camera (and screen, if it shares one)
    /// published through a PassThrough each, and subscriptions both ways with everyone there.
    pub fn join_openvidu(
        &self,
        session: &str,
        p: &crate::scenario::Participant,
    ) -> OpenViduParticipant {
        let mut raised = Vec::new();
        let pipeline = {
            let st = self.lock();
            st.openvidu_sessions.get(session).cloned()
        };
        let pipeline = match pipeline {
            Some(id) if self.lock().objects.contains_key(&id) => id,
            _ => {
                let id = self
                    .create("MediaPipeline", &Value::Null, &mut raised)
                    .expect("pipeline");
                self.lock()
                    .openvidu_sessions
                    .insert(session.to_owned(), id.clone());
                id
            }
        };
        let connection = connection_id();
        let camera = Arc::new(PublisherMedia {
            name: connection.clone(),
            video: p.video_spec(),
            audio: p.audio_source(),
        });
        let mut streams = vec![("CAM", camera)];
        if p.screen {
            // A screen share: video only, its own stream and PassThrough.
            streams.push((
                "SCR",
                Arc::new(PublisherMedia {
                    name: connection.clone(),
                    video: p.video_spec(),
                    audio: None,
                }),
            ));
        }
        let ctor = json!({"mediaPipeline": pipeline});
        let mut me = OpenViduParticipant {
            pipeline: pipeline.clone(),
            connection: connection.clone(),
            publishers: vec![],
            passthroughs: vec![],
        };
        let mut links = Vec::new();
        let mut new_streams = Vec::new();
        for (kind, media) in streams {
            let publisher = self
                .create("WebRtcEndpoint", &ctor, &mut raised)
                .expect("publisher");
            let codec = media.video.as_ref().map(|(c, _)| c.clone());
            let (offer, answer) = sdp::webrtc_pair(
                codec.as_deref(),
                media.audio.is_some(),
                false,
                "sendonly",
                u64::from(fastrand::u32(..)),
            );
            let passthrough = self
                .create("PassThrough", &ctor, &mut raised)
                .expect("passthrough");
            let sid = stream_id(kind, &connection);
            {
                let mut st = self.lock();
                let o = st.objects.get_mut(&publisher).expect("created");
                // Named after building (ObjectCreated already went out under the id).
                o.name = Some(sid.clone());
                if let Kind::WebRtc(w) = &mut o.kind {
                    w.remote_sdp = Some(offer);
                    w.local_sdp = Some(answer);
                    w.publisher = Some(media.clone());
                }
            }
            for m in ["AUDIO", "VIDEO"] {
                links.push(Link {
                    source: publisher.clone(),
                    sink: passthrough.clone(),
                    media: m,
                });
            }
            for m in ["AUDIO", "VIDEO"] {
                if self.is_publisher_with(&self.lock(), &publisher, m) {
                    raised.push(Raised {
                        object: publisher.clone(),
                        ty: "MediaFlowOutStateChanged",
                        data: obj_map(
                            json!({"state": "FLOWING", "padName": "default", "mediaType": m}),
                        ),
                    });
                }
            }
            new_streams.push((sid, passthrough.clone(), codec));
            me.publishers.push(publisher);
            me.passthroughs.push(passthrough);
        }
        // Everyone already there: (connection, [(streamId, passthrough, codec)]).
        let others: Vec<(String, String, String, Option<String>)> = {
            let st = self.lock();
            st.openvidu_participants
                .iter()
                .filter(|o| o.pipeline == pipeline)
                .flat_map(|o| {
                    o.publishers
                        .iter()
                        .zip(&o.passthroughs)
                        .map(|(pubid, pt)| {
                            let (sid, codec) = match st.objects.get(pubid) {
                                Some(obj) => (
                                    obj.name.clone().unwrap_or_default(),
                                    match &obj.kind {
                                        Kind::WebRtc(WebRtc {
                                            publisher: Some(pm),
                                            ..
                                        }) => pm.video.as_ref().map(|(c, _)| c.clone()),
                                        _ => None,
                                    },
                                ),
                                None => (String::new(), None),
                            };
                            (o.connection.clone(), sid, pt.clone(), codec)
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let viewers: BTreeSet<String> = {
            let st = self.lock();
            st.openvidu_participants
                .iter()
                .filter(|o| o.pipeline == pipeline)
                .map(|o| o.connection.clone())
                .collect()
        };
        // I subscribe to every stream there; everyone there subscribes to mine.
        let mut subscriptions: Vec<(String, String, String, Option<String>)> = others
            .into_iter()
            .map(|(_, sid, pt, codec)| (connection.clone(), sid, pt, codec))
            .collect();
        for viewer in &viewers {
            for (sid, pt, codec) in &new_streams {
                subscriptions.push((viewer.clone(), sid.clone(), pt.clone(), codec.clone()));
            }
        }
        for (viewer, sid, pt, codec) in subscriptions {
            let sub = self
                .create("WebRtcEndpoint", &ctor, &mut raised)
                .expect("subscriber");
            let (o, a) = sdp::webrtc_pair(
                codec.as_deref(),
                true,
                false,
                "recvonly",
                u64::from(fastrand::u32(..)),
            );
            {
                let mut st = self.lock();
                let obj = st.objects.get_mut(&sub).expect("created");
                obj.name = Some(format!("{viewer}_{sid}"));
                if let Kind::WebRtc(w) = &mut obj.kind {
                    w.remote_sdp = Some(o);
                    w.local_sdp = Some(a);
                }
            }
            for m in ["AUDIO", "VIDEO"] {
                links.push(Link {
                    source: pt.clone(),
                    sink: sub.clone(),
                    media: m,
                });
            }
        }
        {
            let mut st = self.lock();
            st.links.extend(links);
            st.openvidu_participants.push(me.clone());
        }
        self.deliver(raised);
        info!(session, participant = %p.name, %connection, streams = me.publishers.len(), "OpenVidu participant joined");
        me
    }

    /// The participant leaves as openvidu-server has it: its publishers, their PassThroughs and
    /// every subscriber endpoint showing them, and its own subscriber endpoints, released; the
    /// pipeline with the last participant. Objects of other clients (taps) are left alone.
    pub fn leave_openvidu(&self, who: &OpenViduParticipant) {
        let mut raised = Vec::new();
        let (doomed, last) = {
            let mut st = self.lock();
            st.openvidu_participants
                .retain(|o| o.connection != who.connection);
            let mine_prefix = format!("{}_str_", who.connection);
            let mut doomed: BTreeSet<String> = who
                .publishers
                .iter()
                .chain(&who.passthroughs)
                .cloned()
                .collect();
            // Subscribers fed by my PassThroughs.
            doomed.extend(
                st.links
                    .iter()
                    .filter(|l| who.passthroughs.contains(&l.source))
                    .map(|l| l.sink.clone())
                    .filter(|s| {
                        st.objects
                            .get(s)
                            .is_some_and(|o| matches!(o.kind, Kind::WebRtc(_)))
                    }),
            );
            // My own subscriptions.
            doomed.extend(
                st.objects
                    .iter()
                    .filter(|(_, o)| {
                        o.parent.as_deref() == Some(&who.pipeline)
                            && o.name
                                .as_deref()
                                .is_some_and(|n| n.starts_with(&mine_prefix))
                    })
                    .map(|(k, _)| k.clone()),
            );
            let last = !st
                .openvidu_participants
                .iter()
                .any(|o| o.pipeline == who.pipeline);
            (doomed, last)
        };
        for d in &doomed {
            self.release(d, &mut raised);
        }
        if last {
            self.release(&who.pipeline, &mut raised);
            self.lock()
                .openvidu_sessions
                .retain(|_, p| *p != who.pipeline);
        }
        self.deliver(raised);
        info!(connection = %who.connection, "OpenVidu participant left");
    }
}
