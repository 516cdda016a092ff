//! Results into the participants' DataChannels through kms-sim's real WebRTC peer: the daemon's
//! offer, ICE, DTLS and SCTP run for real; what each simulated browser received is asserted.

use std::time::{Duration, Instant};

use tap_protocol::{DataChannelMessage, ModelId, PixelFormat, DATACHANNEL_RESULT_TYPE};
use tap_test_support::prelude::*;

const SCENARIO: &str = "
[[room]]
name = 'dc'
[[room.participant]]
name = 'ana'
video = { width = 160, height = 120, fps = 15 }
data_channels = true
[[room.participant]]
name = 'bob'
video = { width = 160, height = 120, fps = 15 }
audio = {}
data_channels = true
leave_ms = 9000
[[room.participant]]
name = 'cyd'
video = { width = 160, height = 120, fps = 15 }
";

fn count_suffix(sim: &kms_sim::SimServer, suffix: &str) -> usize {
    sim.media_set()
        .object_ids()
        .iter()
        .filter(|i| i.ends_with(suffix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_each_participant_through_its_datachannel_paced_and_released() {
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let spec = video_spec("dcfer", Some(10.0), None, 160, 120, PixelFormat::Rgb24);
    let _reg = Registration::new(&client, spec).await;
    let (_seen, _worker) = worker(&client, &ModelId::new("dcfer", "1"), Duration::ZERO).await;

    let h = Harness::new()
        .nats(nats)
        .scenario(SCENARIO)
        .sim_ports(52000..=52999)
        .tap_ports(53000..=53999)
        .configure(|c| {
            c.datachannel.max_rate_hz = 3.0;
            c.datachannel.ice_ports = Some((56000, 56099));
        })
        .start()
        .await;
    let taps = h.wait_taps(3).await;
    let endpoint = |name: &str| {
        taps.iter()
            .find(|t| t.participant == name)
            .unwrap()
            .endpoint
            .clone()
    };
    let (ana, bob, cyd) = (endpoint("ana"), endpoint("bob"), endpoint("cyd"));

    // Wait until both data-channel participants have received results.
    let started = Instant::now();
    loop {
        let (a, _) = h.sim.media_set().data_received(&ana);
        let (b, _) = h.sim.media_set().data_received(&bob);
        if a.len() >= 6 && b.len() >= 6 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "ana got {a:?}, bob got {b:?}; metrics:\n{}",
            h.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two real peers (one per data-channel participant), none for cyd, whose app has no channel.
    assert_eq!(h.sim.media_set().webrtc_peers(), 2);
    assert_eq!(h.sim.media_set().data_received(&cyd).1, 0);

    let since = Instant::now();
    let (_, ana_before) = h.sim.media_set().data_received(&ana);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ana_msgs, ana_after) = h.sim.media_set().data_received(&ana);
    // Paced: the token bucket (3/s, burst 3) bounds what a participant gets, while the worker
    // answers 10 frames a second.
    let window = since.elapsed().as_secs_f64();
    let got = ana_after - ana_before;
    assert!(
        got as f64 <= 3.0 * window + 3.0,
        "{got} messages in {window:.1}s"
    );
    assert!(got >= 3, "results keep flowing ({got} in {window:.1}s)");

    for (who, msgs) in [
        ("ana", ana_msgs),
        ("bob", h.sim.media_set().data_received(&bob).0),
    ] {
        let now_ms = now_ms() as f64;
        for text in &msgs {
            let m: DataChannelMessage = serde_json::from_str(text).expect("v1 message");
            assert_eq!(m.v, 1);
            assert_eq!(m.kind, DATACHANNEL_RESULT_TYPE);
            assert_eq!(m.participant, who, "targeted: {text}");
            assert_eq!(m.room, "dc");
            assert_eq!((m.model.as_str(), m.version.as_str()), ("dcfer", "1"));
            assert_eq!(m.top.as_deref(), Some("a"));
            assert_eq!(m.score, Some(0.75));
            assert_eq!(m.labels.get("b"), Some(&0.25));
            assert!(
                m.capture_ms > now_ms - 60_000.0 && m.capture_ms <= now_ms,
                "capture time {} vs now {now_ms}",
                m.capture_ms
            );
            assert!(text.len() < 400, "small: {} bytes", text.len());
        }
    }

    let metrics = h.metrics().await;
    assert!(
        metrics.contains("kurento_tap_datachannels_open 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kurento_tap_datachannel_messages_total{outcome=\"superseded\"}"),
        "over the rate, older results are replaced: {metrics}"
    );
    assert!(metrics.contains("kurento_tap_datachannel_setups_total{outcome=\"opened\"} 2"));

    // Bob leaves (the app releases his endpoints): our objects for him go too, the room stays.
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.sim.media_set().webrtc_peers() != 1 || count_suffix(&h.sim, "RtpEndpoint") != 2 {
        assert!(
            Instant::now() < deadline,
            "after bob left: {} peers, {} taps",
            h.sim.media_set().webrtc_peers(),
            count_suffix(&h.sim, "RtpEndpoint")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Shutdown releases what the daemon created and nothing of the app's.
    h.daemon.shutdown().await;
    assert_eq!(h.sim.media_set().webrtc_peers(), 0);
    assert_eq!(count_suffix(&h.sim, "RtpEndpoint"), 0);
    let app_endpoints = count_suffix(&h.sim, "WebRtcEndpoint");
    // ana's and cyd's publishers and the endpoints where each watches the other.
    assert_eq!(app_endpoints, 4);
    assert!(h.sim.media_set().data_received(&ana).1 >= ana_after);
}

/// KMS keeps one DATA source per sink: the daemon replaces a publisher's self-loop (the hello-world
/// tutorial's echo) but never a DATA link another element of the application made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_own_data_link_is_left_alone_and_a_self_loop_is_replaced() {
    use kurento_client::prelude::*;
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let spec = video_spec("guard", Some(5.0), None, 64, 48, PixelFormat::Rgb24);
    let _reg = Registration::new(&client, spec).await;
    let (_seen, _worker) = worker(&client, &ModelId::new("guard", "1"), Duration::ZERO).await;
    let staged = Harness::new()
        .nats(nats)
        .scenario("[[room]]\nname='guard'\n[[room.participant]]\nname='dan'\nvideo={width=160,height=120}\ndata_channels=true\nloopback=true\n[[room.participant]]\nname='eve'\nvideo={width=160,height=120}\ndata_channels=true\n")
        .sim_ports(54000..=54499)
        .tap_ports(54500..=54999)
        .start_sim()
        .await;
    // The application feeds eve's DATA from an element of its own before the daemon starts.
    let app = kurento_client::KurentoClient::connect(&staged.sim.url())
        .await
        .unwrap();
    let mut eve_ep = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while eve_ep.is_none() {
        assert!(Instant::now() < deadline, "eve never joined");
        for p in app.server_manager().get_pipelines().await.unwrap() {
            for c in p.get_children().await.unwrap() {
                if let Some(ep) = c.downcast::<WebRtcEndpoint>() {
                    let tags = ep.get_tags().await.unwrap();
                    if tags.iter().any(|t| t.value == "eve") {
                        let feeder = p
                            .create::<WebRtcEndpoint>()
                            .use_data_channels(true)
                            .await
                            .unwrap();
                        feeder.connect(&ep, MediaType::Data).await.unwrap();
                        eve_ep = Some((ep, feeder.id().to_owned()));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (eve_ep, feeder) = eve_ep.unwrap();

    let h = staged.start_daemon().await;
    let taps = h.wait_taps(2).await;
    let dan = taps.iter().find(|t| t.participant == "dan").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = h.metrics().await;
        let refused =
            m.contains("kurento_tap_datachannel_setups_total{outcome=\"data_source_in_use\"} 1");
        if refused && h.sim.media_set().data_received(&dan.endpoint).1 >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sources = eve_ep
        .get_source_connections(MediaType::Data)
        .await
        .unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].source, feeder, "the app's link is untouched");
    assert_eq!(h.sim.media_set().data_received(eve_ep.id()).1, 0);
    assert_eq!(h.sim.media_set().webrtc_peers(), 1, "a peer for dan only");
    // `kurento-tap rooms` shows who can receive results in the call.
    let rooms = tap_daemon::discovery::list_rooms(&app, &Default::default())
        .await
        .unwrap();
    let dan_report = rooms[0]
        .participants
        .iter()
        .find(|p| p.name == "dan")
        .unwrap();
    assert_eq!(dan_report.media, ["video:VP8", "datachannel"]);
    h.stop().await;
}

/// KMS gone for good: stopping the daemon does not wait on releases that cannot happen (the next
/// start sweeps what is left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_hang_when_kms_is_gone() {
    let h = Harness::new()
        .scenario("[[room]]\nname='gone'\n[[room.participant]]\nname='fay'\nvideo={width=160,height=120}\ndata_channels=true\n[[room.participant]]\nname='gus'\naudio={}\ndata_channels=true\n")
        .sim_ports(55000..=55499)
        .tap_ports(55500..=55999)
        .start()
        .await;
    h.wait_taps(2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.sim.media_set().webrtc_peers() < 2 {
        assert!(
            Instant::now() < deadline,
            "DataChannel endpoints not created"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.sim.stop();
    // Four objects of ours would each wait out the 20 s request timeout without the fix; the
    // bound here only catches a hang (shutdown gives the actor 10 s at most).
    tokio::time::timeout(Duration::from_secs(30), h.daemon.shutdown())
        .await
        .expect("shutdown finished");
}
