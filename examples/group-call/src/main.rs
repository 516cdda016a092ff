//! A minimal Kurento group-call application, modelled on Kurento's Java group-call tutorial, for
//! trying kurento-tap against a real KMS with real browsers (and for integrators to copy from).
//!
//! Same topology as the tutorial: one MediaPipeline per room; per participant one publisher
//! ("outgoing") WebRtcEndpoint answering the browser's sendonly offer, and one subscriber
//! ("incoming") WebRtcEndpoint per other participant, fed by `outgoing.connect(incoming)`. Like the
//! Java tutorial there is no self-loop. Same signalling messages as the tutorial's
//! `conferenceroom.js` (`joinRoom`, `receiveVideoFrom`, `onIceCandidate`, `leaveRoom` in;
//! `existingParticipants`, `newParticipantArrived`, `participantLeft`, `receiveVideoAnswer`,
//! `iceCandidate` out).
//!
//! Two optional deviations, each one line in a real app: `--tags` names rooms and participants for
//! kurento-tap (`kurento-tap.room`, `kurento-tap.participant`), and `--data-channels` (on by
//! default) builds publishers with `useDataChannels` so kurento-tap can put results into the call.
//!
//! ```text
//! group-call --kms ws://127.0.0.1:8888/kurento --listen 127.0.0.1:8080
//! open http://127.0.0.1:8080/?room=demo&name=alice
//! ```

mod http;
mod rooms;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use kurento_client::KurentoClient;
use tracing::info;

/// A Kurento group-call app (the tutorial's topology) with a browser page.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Opts {
    /// Kurento Media Server.
    #[arg(
        long,
        env = "GROUP_CALL_KMS",
        default_value = "ws://127.0.0.1:8888/kurento"
    )]
    pub kms: String,
    /// Address for the page and the signalling WebSocket (`/groupcall`).
    #[arg(long, env = "GROUP_CALL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Tag pipelines and publishers with room and participant names for kurento-tap.
    #[arg(long)]
    pub tags: bool,
    /// Build publishers with `useDataChannels` (the browser page opens a channel before its offer).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub data_channels: bool,
    /// Directory of the page (index.html, groupcall.js); defaults to the one beside the sources.
    #[arg(long)]
    pub static_dir: Option<PathBuf>,
    /// Build the object graph as openvidu-server 2.x does instead of the tutorial's: unnamed
    /// pipeline, no tags, no DataChannels, each publisher named with its streamId after creation
    /// (`str_CAM_<4 chars>_<connectionId>`) feeding an unnamed PassThrough, and every subscriber
    /// (named `<connectionId>_<streamId>`) fed from that PassThrough.
    #[arg(long)]
    pub openvidu_shape: bool,
    /// With `--openvidu-shape`: serve OpenVidu's REST surface on the same listener
    /// (`GET /openvidu/api/sessions`, `POST /openvidu/api/signal`, Basic auth `OPENVIDUAPP:<secret>`;
    /// a signal reaches the browsers on the signalling socket as `{id: "signal", type, data}`).
    #[arg(long, env = "GROUP_CALL_OPENVIDU_SECRET")]
    pub openvidu_secret: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let opts = Opts::parse();
    let kms = KurentoClient::connect(&opts.kms).await?;
    let static_dir = opts
        .static_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("static"));
    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    // The line tests and scripts wait for.
    println!("group-call listening on http://{}/", listener.local_addr()?);
    info!(kms = %opts.kms, tags = opts.tags, data_channels = opts.data_channels, "group-call app ready");
    let app = rooms::App::new(kms, opts);
    http::serve(listener, static_dir, app).await
}
