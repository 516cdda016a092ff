//! Several daemons on one KMS (kms-sim), as processes: every participant tapped exactly once, a
//! daemon killed with SIGKILL is taken over and its objects swept, a restarted daemon takes nothing
//! that runs, and a NATS outage longer than a lease stops every tap until ownership is proven again.
//! The soak (`scripts/cluster-soak`) runs the long version with figures; this asserts outcomes only.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use kurento_client::prelude::*;
use tap_test_support::prelude::*;
use tap_test_support::proc::{workspace_bin, Proc};

const ROOMS: &str = "
[[room]]
name = 'red'
[[room.participant]]
name = 'r1'
video = { codec = 'VP8', width = 160, height = 120, fps = 10 }
[[room.participant]]
name = 'r2'
audio = { tone = 440.0 }
[[room]]
name = 'green'
[[room.participant]]
name = 'g1'
video = { codec = 'VP8', width = 160, height = 120, fps = 10 }
[[room.participant]]
name = 'g2'
audio = { tone = 550.0 }
[[room]]
name = 'blue'
[[room.participant]]
name = 'b1'
video = { codec = 'VP8', width = 160, height = 120, fps = 10 }
[[room.participant]]
name = 'b2'
audio = { tone = 660.0 }
[[room]]
name = 'white'
[[room.participant]]
name = 'w1'
audio = { tone = 770.0 }
";

const OWNER_KEY: &str = tap_protocol::tags::OWNER;
const TAPPED_KEY: &str = tap_protocol::tags::TAPPED_ENDPOINT;
const PUBLISHERS: usize = 7;

/// Every tap in KMS: publisher endpoint → owners of the RtpEndpoints tapping it; and the count of
/// objects each owner has in KMS (taps and DataChannel peers).
async fn taps_in_kms(
    kms: &KurentoClient,
) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, usize>) {
    let mut taps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    for p in kms
        .server_manager()
        .get_pipelines()
        .await
        .unwrap_or_default()
    {
        let Ok(children) = p.get_children().await else {
            continue;
        };
        for c in children {
            let Ok(tags) = c.get_tags().await else {
                continue;
            };
            let Some(owner) = tags.iter().find(|t| t.key == OWNER_KEY) else {
                continue;
            };
            *owned.entry(owner.value.clone()).or_default() += 1;
            let is_tap = c.id().ends_with("RtpEndpoint") && !c.id().ends_with("WebRtcEndpoint");
            if let (true, Some(ep)) = (is_tap, tags.iter().find(|t| t.key == TAPPED_KEY)) {
                taps.entry(ep.value.clone())
                    .or_default()
                    .push(owner.value.clone());
            }
        }
    }
    (taps, owned)
}

/// Waits until every publisher is tapped exactly once, by `by` if given (a participant tapped
/// twice at any look is counted in `duplicates`).
async fn wait_each_tapped_once(
    kms: &KurentoClient,
    limit: Duration,
    duplicates: &mut usize,
    by: Option<&str>,
) -> Option<(BTreeMap<String, Vec<String>>, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let (taps, _) = taps_in_kms(kms).await;
        *duplicates = (*duplicates).max(taps.values().filter(|o| o.len() > 1).count());
        if taps.len() == PUBLISHERS
            && taps
                .values()
                .all(|o| o.len() == 1 && by.is_none_or(|b| o[0] == b))
        {
            return Some((taps, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn daemon(name: &str, sim_url: &str, nats: &str, ports: &str) -> Proc {
    let mut cmd = Command::new(workspace_bin("kurento-tap"));
    cmd.args([
        "run",
        "--kurento",
        sim_url,
        "--nats",
        nats,
        "--cluster",
        "true",
    ])
    .args(["--owner", name, "--ports", ports, "--http", "127.0.0.1:0"])
    .args(["--datachannels", "false"])
    .env("RUST_LOG", "tap_daemon=info");
    Proc::spawn(name, cmd)
}

fn kill9(p: &mut Proc) {
    let _ = p.child.kill();
    let _ = p.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_share_rooms_fail_over_and_never_double_tap() {
    let _turn = one_media_rate_test_at_a_time().await;
    let nats = Nats::start().await;
    let sim = sim(ROOMS, (47000, 47499)).await;
    let kms = KurentoClient::connect(&sim.url()).await.unwrap();
    let mut duplicates = 0;

    let mut a = daemon("tap-a", &sim.url(), &nats.url, "47500-47599");
    let mut b = daemon("tap-b", &sim.url(), &nats.url, "47600-47699");
    for d in [&a, &b] {
        assert!(
            d.wait_line("metrics on", Duration::from_secs(20))
                .await
                .is_some(),
            "{} did not start:\n{}",
            d.name,
            d.output()
        );
    }
    let Some((taps, _)) =
        wait_each_tapped_once(&kms, Duration::from_secs(30), &mut duplicates, None).await
    else {
        panic!(
            "not every participant tapped once: {:?}",
            taps_in_kms(&kms).await
        );
    };
    // Started together, they usually split the rooms; one started first may hold them all (rooms
    // held are never moved), which the takeover below covers just as well.
    let of = |who: &str| taps.values().filter(|o| o[0] == who).count();
    eprintln!(
        "placement: tap-a {} and tap-b {} participants",
        of("tap-a"),
        of("tap-b")
    );

    // `kurento-tap cluster` shows who holds what: 4 rooms, 2 daemons.
    let view = Command::new(workspace_bin("kurento-tap"))
        .args(["cluster", "--json", "--nats", &nats.url])
        .output()
        .unwrap();
    let view: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&view.stderr));
    });
    assert_eq!(view["rooms"].as_array().unwrap().len(), 4, "{view}");
    assert_eq!(view["daemons"].as_array().unwrap().len(), 2, "{view}");

    // kill -9 the daemon that holds a room with video: the other takes everything over and sweeps
    // the dead one's taps (by owner tag).
    let victim = taps.values().next().unwrap()[0].clone();
    let (dead, survivor) = if victim == "tap-a" {
        (&mut a, "tap-b")
    } else {
        (&mut b, "tap-a")
    };
    kill9(dead);
    let Some((_, took)) = wait_each_tapped_once(
        &kms,
        Duration::from_secs(30),
        &mut duplicates,
        Some(survivor),
    )
    .await
    else {
        panic!("no takeover: {:?}", taps_in_kms(&kms).await);
    };
    eprintln!("takeover after kill -9: every participant tapped by {survivor} after {took:?}");
    let (_, owned) = taps_in_kms(&kms).await;
    assert_eq!(
        owned.get(&victim),
        None,
        "the dead daemon's objects were swept: {owned:?}"
    );

    // Restarted with the same id, it takes its share one room at a time: the survivor holds 4
    // rooms, the fair share is 2, and a daemon over fair share + 1 hands one room over per
    // interval; so exactly one room moves, and no participant is ever tapped twice.
    let ports = if victim == "tap-a" {
        "47500-47599"
    } else {
        "47600-47699"
    };
    let restarted = daemon(&victim, &sim.url(), &nats.url, ports);
    assert!(restarted
        .wait_line("metrics on", Duration::from_secs(20))
        .await
        .is_some());
    let rooms_of = |taps: &BTreeMap<String, Vec<String>>, who: &str| {
        let mut rooms: Vec<String> = taps
            .iter()
            .filter(|(_, o)| o.iter().any(|x| x == who))
            .map(|(ep, _)| ep.split('/').next().unwrap().to_owned())
            .collect();
        rooms.sort();
        rooms.dedup();
        rooms.len()
    };
    let joined = Instant::now();
    let mut moved = false;
    while joined.elapsed() < Duration::from_secs(30) {
        let (taps, _) = taps_in_kms(&kms).await;
        duplicates = duplicates.max(taps.values().filter(|o| o.len() > 1).count());
        if rooms_of(&taps, &victim) == 1 && taps.len() == PUBLISHERS {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        moved,
        "the joining daemon got no room: {:?}",
        taps_in_kms(&kms).await.0
    );
    // Two more intervals: nothing else moves (3 of 4 rooms is fair share + 1).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (taps, _) = taps_in_kms(&kms).await;
    assert_eq!(
        (rooms_of(&taps, &victim), rooms_of(&taps, survivor)),
        (1, 3),
        "{taps:?}"
    );
    assert!(
        taps.values().all(|o| o.len() == 1) && taps.len() == PUBLISHERS,
        "{taps:?}"
    );
    if victim == "tap-a" {
        a = restarted;
    } else {
        b = restarted;
    }

    // NATS gone longer than a lease: every daemon stops tapping (it cannot prove it owns a room);
    // back: each room is tapped once again.
    let mut nats = nats;
    let port = nats.port;
    nats.stop();
    let stopped = Instant::now();
    let mut all_stopped = false;
    while stopped.elapsed() < Duration::from_secs(15) {
        if taps_in_kms(&kms).await.0.is_empty() {
            all_stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        all_stopped,
        "taps kept running without NATS: {:?}",
        taps_in_kms(&kms).await.0
    );
    let nats2 = Nats::start_on_reusing(port, &nats).await;
    if wait_each_tapped_once(&kms, Duration::from_secs(40), &mut duplicates, None)
        .await
        .is_none()
    {
        panic!(
            "not re-tapped after NATS came back: {:?}",
            taps_in_kms(&kms).await
        );
    }
    assert_eq!(
        duplicates, 0,
        "a participant was tapped twice at some point"
    );

    // Clean stops hand over and release everything.
    assert!(a.terminate(Duration::from_secs(15)), "{}", a.output());
    assert!(b.terminate(Duration::from_secs(15)), "{}", b.output());
    let (taps, owned) = taps_in_kms(&kms).await;
    assert!(taps.is_empty() && owned.is_empty(), "leaked: {owned:?}");
    drop(nats2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_watches_several_kms_and_says_which_room_is_where() {
    let _turn = one_media_rate_test_at_a_time().await;
    let nats = Nats::start().await;
    let east = sim(
        "[[room]]\nname='lobby'\n[[room.participant]]\nname='e1'\naudio={}\n",
        (47700, 47799),
    )
    .await;
    let west = sim(
        "[[room]]\nname='lobby'\n[[room.participant]]\nname='w1'\naudio={}\n[[room.participant]]\nname='w2'\naudio={}\n",
        (47800, 47899),
    )
    .await;
    let mut cfg = config(&east, &nats, (47900, 47999));
    cfg.kms_name = "east".into();
    cfg.additional_kms = vec![tap_daemon::settings::KmsTarget {
        name: "west".into(),
        url: west.url(),
    }];
    cfg.cluster.enabled = true;
    cfg.owner = "tap-multi".into();
    cfg.datachannel.enabled = false;
    let daemon = tap_daemon::Daemon::start(cfg).await.unwrap();
    let taps = wait_taps(&daemon, 3).await;
    let placed: Vec<(&str, &str, &str)> = taps
        .iter()
        .map(|t| (t.kms.as_str(), t.room.as_str(), t.participant.as_str()))
        .collect();
    assert_eq!(
        placed,
        [
            ("east", "lobby", "e1"),
            ("west", "lobby", "w1"),
            ("west", "lobby", "w2")
        ],
        "two rooms of the same name on two KMS stay apart"
    );
    let view = Command::new(workspace_bin("kurento-tap"))
        .args(["cluster", "--json", "--nats", &nats.url])
        .output()
        .unwrap();
    let view: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    let mut kms: Vec<&str> = view["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kms"].as_str().unwrap())
        .collect();
    kms.sort();
    assert_eq!(kms, ["east", "west"], "{view}");
    assert_eq!(
        view["daemons"][0]["kms"],
        serde_json::json!(["east", "west"])
    );

    // Control requests find the KMS that has the pipeline, or go where `kms` says.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let w1 = taps.iter().find(|t| t.participant == "w1").unwrap();
    let pipeline = w1.endpoint.split('/').next().unwrap();
    let ask = |body: serde_json::Value| {
        let client = client.clone();
        async move {
            let r = client
                .request(tap_protocol::CTL_DETACH, body.to_string().into())
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()
        }
    };
    let r =
        ask(serde_json::json!({"pipeline": pipeline, "endpoint": w1.endpoint, "kms": "nowhere"}))
            .await;
    assert_eq!(r["ok"], false, "{r}");
    let r = ask(serde_json::json!({"pipeline": pipeline, "endpoint": w1.endpoint})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(daemon.status().await.len(), 2);
    daemon.shutdown().await;
    let (east_taps, _) = taps_in_kms(&KurentoClient::connect(&east.url()).await.unwrap()).await;
    let (west_taps, _) = taps_in_kms(&KurentoClient::connect(&west.url()).await.unwrap()).await;
    assert!(
        east_taps.is_empty() && west_taps.is_empty(),
        "released on both KMS"
    );
}
