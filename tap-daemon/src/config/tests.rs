use super::*;
use std::time::Duration;

#[test]
fn the_openvidu_host_and_table_are_read_and_checked_and_the_secret_never_shows() {
    let d = resolve(FileConfig::default(), Overrides::default()).unwrap();
    assert_eq!(
        d.host,
        crate::discovery::openvidu::Host::Kurento,
        "today's behaviour by default"
    );
    let secret = std::env::temp_dir().join(format!("ov-secret-{}", std::process::id()));
    std::fs::write(&secret, "MY_SECRET_value\n").unwrap();
    let file: FileConfig = toml::from_str(&format!(
        "host = 'openvidu'\n[openvidu]\nurl = 'http://127.0.0.1:5443'\nsecret_file = '{}'\ninclude_screens = true\nsignal_audience = 'room'\n",
        secret.display()
    ))
    .unwrap();
    let c = resolve(file, Overrides::default()).unwrap();
    assert_eq!(c.host, crate::discovery::openvidu::Host::OpenVidu);
    assert!(c.openvidu.include_screens);
    assert_eq!(
        c.openvidu.signal_audience,
        crate::discovery::openvidu::SignalAudience::Room
    );
    assert!(
        !format!("{c:?}").contains("MY_SECRET"),
        "the secret never shows"
    );
    let _ = std::fs::remove_file(&secret);
    // From the environment, with flags winning.
    let o = Overrides {
        host: Some("openvidu".into()),
        openvidu_url: Some("http://ov:5443".into()),
        openvidu_secret: Some("env-secret".into()),
        ..Default::default()
    };
    let c = resolve(FileConfig::default(), o).unwrap();
    assert_eq!(c.openvidu.url.as_deref(), Some("http://ov:5443"));
    for (bad, says) in [
        (
            Overrides {
                host: Some("jitsi".into()),
                ..Default::default()
            },
            "expected kurento or openvidu",
        ),
        (
            Overrides {
                host: Some("openvidu".into()),
                openvidu_url: Some("http://ov:5443".into()),
                ..Default::default()
            },
            "secret",
        ),
        (
            Overrides {
                host: Some("openvidu".into()),
                openvidu_url: Some("https://ov".into()),
                openvidu_secret: Some("s".into()),
                ..Default::default()
            },
            "https is not supported",
        ),
        (
            Overrides {
                openvidu_url: Some("http://ov:5443".into()),
                openvidu_secret: Some("s".into()),
                ..Default::default()
            },
            "host is not",
        ),
        (
            Overrides {
                host: Some("openvidu".into()),
                openvidu_secret_file: Some("/nonexistent/ov".into()),
                ..Default::default()
            },
            "cannot read",
        ),
    ] {
        let e = resolve(FileConfig::default(), bad).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
    let o = Overrides {
        host: Some("openvidu".into()),
        openvidu_url: Some("http://ov:5443".into()),
        openvidu_secret: Some("TOPSECRET".into()),
        ..Default::default()
    };
    let file: FileConfig = toml::from_str("[openvidu]\nsignal_rate_hz = 0\n").unwrap();
    let e = resolve(file, o).unwrap_err().to_string();
    assert!(
        e.contains("signal_rate_hz") && !e.contains("TOPSECRET"),
        "{e}"
    );
    assert!(
        toml::from_str::<FileConfig>("[openvidu]\nsecret = 'x'\n").is_err(),
        "no secret in the file itself"
    );
}

#[test]
fn the_policy_is_read_from_the_file_or_an_override_and_unknown_names_are_refused() {
    use crate::privacy::policy::Policy;
    let d = resolve(FileConfig::default(), Overrides::default()).unwrap();
    assert_eq!(
        (d.policy, d.mood.policy),
        (Policy::Emotions, Policy::Emotions)
    );
    let file: FileConfig = toml::from_str("policy = 'expressions'\n").unwrap();
    let c = resolve(file, Overrides::default()).unwrap();
    assert_eq!(
        (c.policy, c.mood.policy),
        (Policy::Expressions, Policy::Expressions)
    );
    let file: FileConfig = toml::from_str("policy = 'expressions'\n").unwrap();
    let o = Overrides {
        policy: Some("aggregate".into()),
        ..Default::default()
    };
    assert_eq!(resolve(file, o).unwrap().policy, Policy::Aggregate);
    let o = Overrides {
        policy: Some("emotion-free".into()),
        ..Default::default()
    };
    let e = resolve(FileConfig::default(), o).unwrap_err().to_string();
    assert!(
        e.contains("unknown policy") && e.contains("aggregate"),
        "{e}"
    );
}

#[test]
fn the_consent_mode_is_read_from_the_file_or_an_override_and_unknown_ones_are_refused() {
    use crate::privacy::consent::ConsentMode;
    let d = resolve(FileConfig::default(), Overrides::default()).unwrap();
    assert_eq!(
        d.consent,
        ConsentMode::OptOut,
        "today's behaviour by default"
    );
    let file: FileConfig = toml::from_str("consent = 'opt-in'\n").unwrap();
    assert_eq!(
        resolve(file, Overrides::default()).unwrap().consent,
        ConsentMode::OptIn
    );
    let file: FileConfig = toml::from_str("consent = 'opt-in'\n").unwrap();
    let o = Overrides {
        consent: Some("opt-out".into()),
        ..Default::default()
    };
    assert_eq!(resolve(file, o).unwrap().consent, ConsentMode::OptOut);
    let o = Overrides {
        consent: Some("yes".into()),
        ..Default::default()
    };
    let e = resolve(FileConfig::default(), o).unwrap_err().to_string();
    assert!(
        e.contains("unknown consent mode") && e.contains("opt-in"),
        "{e}"
    );
}

#[test]
fn the_cluster_table_and_kms_lists_are_read_and_checked() {
    let file: FileConfig = toml::from_str(
        "kurento = \"a=ws://10.0.0.1:8888/kurento, b=ws://10.0.0.2:8888/kurento\"\n[cluster]\nenabled = true\nrebalance_ms = 0\n",
    )
    .unwrap();
    let c = resolve(file, Overrides::default()).unwrap();
    assert!(c.cluster.enabled);
    assert!(c.cluster.lease.rebalance_every.is_zero());
    assert!(
        c.owner.starts_with("kurento-tap-"),
        "one owner per host in cluster mode"
    );
    let names: Vec<String> = c.targets().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["a", "b"]);
    let bare = parse_kms_list("ws://h1:8888/kurento").unwrap();
    assert_eq!(bare[0].name, "h1:8888");
    for bad in [
        "[cluster]\nrenew_ms = 2000\n",
        "[cluster]\nmargin_ms = 3000\n",
        "kurento = \"a=ws://x/kurento,a=ws://y/kurento\"\n",
        "kurento = \"http://x\"\n",
        "kurento = \"a=ws://x/kurento,b=ws://y/kurento\"\nkms_name = \"c\"\n",
    ] {
        let file: FileConfig = toml::from_str(bad).unwrap();
        assert!(resolve(file, Overrides::default()).is_err(), "{bad}");
    }
}

#[test]
fn data_endpoints_leave_loopback_only_with_a_credential() {
    let token = std::env::temp_dir().join(format!("tap-token-{}", std::process::id()));
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let parse = |text: String| {
        let file: FileConfig = toml::from_str(&text).unwrap();
        resolve(file, Overrides::default())
    };
    // Open to the network without a credential: refused, saying what to do.
    let e = parse("http = '0.0.0.0:9464'\n".into())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("without a credential") && e.contains("token_file"),
        "{e}"
    );
    // Probes on the network, data on loopback: fine without a token.
    let c = parse("http = '0.0.0.0:9464'\ndata_http = '127.0.0.1:9465'\n".into()).unwrap();
    assert_eq!(c.data_http_listen, Some("127.0.0.1:9465".parse().unwrap()));
    assert!(!c.data_auth.enabled());
    // With a token file, anywhere.
    let c = parse(format!(
        "http = '0.0.0.0:9464'\ntoken_file = '{}'\n",
        token.display()
    ))
    .unwrap();
    assert!(c
        .data_auth
        .token
        .as_ref()
        .unwrap()
        .matches("0123456789abcdef0123456789abcdef"));
    // Or behind a proxy that authenticates.
    let c =
        parse("http = '0.0.0.0:9464'\nauth_proxy_header = 'X-Forwarded-User'\n".into()).unwrap();
    assert_eq!(
        c.data_auth.proxy_header.as_deref(),
        Some("x-forwarded-user")
    );
    // A short token, a missing file, a bad header name, a bad address: clear errors.
    std::fs::write(&token, "short\n").unwrap();
    let e = parse(format!("token_file = '{}'\n", token.display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 24"), "{e}");
    let _ = std::fs::remove_file(&token);
    let e = parse(format!("token_file = '{}'\n", token.display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&token.display().to_string()), "{e}");
    assert!(parse("auth_proxy_header = 'X User'\n".into()).is_err());
    assert!(parse("data_http = 'nowhere'\n".into()).is_err());
    // The token never shows in the configuration's debug print.
    let c = resolve(
        FileConfig::default(),
        Overrides {
            token: Some("0123456789abcdef0123456789abcdef".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("0123456789abcdef"));
}

#[test]
fn the_mood_table_is_read_and_checked() {
    let file: FileConfig =
        toml::from_str("[mood]\nmin_group = 5\nenabled = false\nper_subject = 100\n").unwrap();
    let c = resolve(file, Overrides::default()).unwrap();
    assert_eq!(c.mood.engine.min_group, 5);
    assert!(!c.mood.enabled);
    assert_eq!(c.mood.per_subject, 100);
    for bad in [
        "[mood]\nmin_group = 0\n",
        "[mood]\nstale_s = 0.1\n",
        "[mood]\nper_subject = 0\n",
    ] {
        let file: FileConfig = toml::from_str(bad).unwrap();
        assert!(resolve(file, Overrides::default()).is_err(), "{bad}");
    }
    assert!(toml::from_str::<FileConfig>("[mood]\nmin_grop = 3\n").is_err());
}

#[test]
fn flags_win_over_the_file() {
    let file: FileConfig = toml::from_str(
        "kurento = 'ws://a/kurento'\nports = '41000-41999'\nhttp = ''\n[tags]\nroom = 'room'\n",
    )
    .unwrap();
    let c = resolve(
        file,
        Overrides {
            kurento: Some("ws://b/kurento".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.kurento_url, "ws://b/kurento");
    assert_eq!(c.ports, (41000, 41999));
    assert_eq!(c.http_listen, None);
    assert_eq!(c.tags.room, "room");
    assert_eq!(c.tags.participant, "kurento-tap.participant");
}

#[test]
fn bad_values_are_clear_errors() {
    assert!(toml::from_str::<FileConfig>("kurentoo = 'x'").is_err());
    assert!(parse_ports("10-20").is_err());
    assert!(parse_ports("50000").is_err());
    let e = resolve(
        FileConfig::default(),
        Overrides {
            http: Some("nowhere".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("HOST:PORT"));
    let file: FileConfig = toml::from_str("[datachannel]\nmax_rate_hz = 0\n").unwrap();
    let e = resolve(file, Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("max_rate_hz"), "{e}");
    assert!(toml::from_str::<FileConfig>("[datachannel]\nrate = 1\n").is_err());
    let file: FileConfig =
        toml::from_str("ports = '40000-40999'\n[datachannel]\nice_ports = '40500-40600'\n")
            .unwrap();
    let e = resolve(file, Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
    let file: FileConfig = toml::from_str("[datachannel]\nice_ports = '41000-41099'\n").unwrap();
    let c = resolve(file, Overrides::default()).unwrap();
    assert_eq!(c.datachannel.ice_ports, Some((41000, 41099)));
    // Jitterbuffer latencies: audio and video apart, each bounded.
    let c = resolve(FileConfig::default(), Overrides::default()).unwrap();
    assert_eq!((c.latency_ms, c.video_latency_ms), (100, 300));
    let file: FileConfig = toml::from_str("latency_ms = 80\nvideo_latency_ms = 500\n").unwrap();
    let c = resolve(file, Overrides::default()).unwrap();
    assert_eq!((c.latency_ms, c.video_latency_ms), (80, 500));
    let file: FileConfig = toml::from_str("video_latency_ms = 5000\n").unwrap();
    let e = resolve(file, Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("video_latency_ms"), "{e}");
}

#[test]
fn datachannel_settings_from_file_and_flags() {
    let file: FileConfig = toml::from_str(
        "[datachannel]\nenabled = true\nmax_rate_hz = 1.5\nmax_wait_ms = 500\nlabel = 'ai'\naudience = 'room'\n",
    )
    .unwrap();
    let c = resolve(
        file,
        Overrides {
            datachannels: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!c.datachannel.enabled);
    assert_eq!(c.datachannel.max_rate_hz, 1.5);
    assert_eq!(c.datachannel.max_wait, Duration::from_millis(500));
    assert_eq!(c.datachannel.label, "ai");
    assert_eq!(c.datachannel.audience, crate::inject::Audience::Room);
    assert!(toml::from_str::<FileConfig>("[datachannel]\naudience = 'all'\n").is_err());
}

#[test]
fn receive_threads_are_per_tap_or_a_bounded_number() {
    assert_eq!(parse_receive_threads("per-tap").unwrap(), None);
    assert_eq!(parse_receive_threads(" 2 ").unwrap(), Some(2));
    for bad in ["0", "65", "two", "", "-1"] {
        let e = parse_receive_threads(bad).unwrap_err().to_string();
        assert!(e.contains("receive_threads"), "{bad}: {e}");
    }
    let file: FileConfig = toml::from_str("receive_threads = \"4\"").unwrap();
    let c = resolve(file, Overrides::default()).unwrap();
    assert_eq!(c.receive_threads, Some(4));
    let c = resolve(
        FileConfig::default(),
        Overrides {
            receive_threads: Some("per-tap".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.receive_threads, None);
    // Said nowhere: threads shared by every tap.
    let c = resolve(FileConfig::default(), Overrides::default()).unwrap();
    assert_eq!(
        c.receive_threads,
        Some(crate::settings::DEFAULT_RECEIVE_THREADS)
    );
}
