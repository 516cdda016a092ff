//! `kurento-tap results`: tails or exports stored results, room moods or fused states.

use std::io::Write;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tap_protocol::affect::{ParticipantState, RoomMood, Trend, AFFECT_STREAM};
use tap_protocol::{safe_token, ResultMessage, RESULTS_STREAM};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line, as stored.
    Jsonl,
    /// `capture_ms,room,participant,model,version,media,seq,top,top_score,latency_ms`.
    Csv,
}

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Per-model results (`tap.v1.result.*`).
    Result,
    /// Room moods (`tap.v1.room.*`): the room timeline.
    Room,
    /// Fused per-participant states (`tap.v1.state.*`).
    State,
}

impl Kind {
    fn stream(self) -> &'static str {
        match self {
            Kind::Result => RESULTS_STREAM,
            Kind::Room | Kind::State => AFFECT_STREAM,
        }
    }

    fn filter(self, room: Option<&str>) -> String {
        let prefix = match self {
            Kind::Result => "tap.v1.result",
            Kind::Room => "tap.v1.room",
            Kind::State => "tap.v1.state",
        };
        match (self, room) {
            (Kind::Room, Some(r)) => format!("{prefix}.{}", safe_token(r)),
            (_, Some(r)) => format!("{prefix}.{}.>", safe_token(r)),
            (_, None) => format!("{prefix}.>"),
        }
    }

    fn csv_header(self) -> &'static str {
        match self {
            Kind::Result => {
                "capture_ms,room,participant,model,version,media,seq,top,top_score,latency_ms"
            }
            Kind::Room => "at_ms,room,presenter,presenter_source,participants,contributors,published,valence,arousal,attentive_share,valence_trend,arousal_trend,emotions,expressions",
            Kind::State => "at_ms,room,participant,valence,arousal,emotion,confidence,face_visible,speaking,attentive",
        }
    }
}

/// Parses a duration like `90s`, `10m`, `2h`, `1d`.
pub fn parse_since(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: give a unit (s, m, h, d)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: not a number"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

/// Writes every stored message of `kind` (of `room`, if given; from `since` ago, if given) to
/// `out`; with `follow`, keeps writing new ones. Returns how many were written. Malformed entries
/// are skipped and reported on stderr.
pub async fn export(
    client: async_nats::Client,
    kind: Kind,
    room: Option<&str>,
    since: Option<std::time::Duration>,
    follow: bool,
    format: Format,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u64> {
    let js = jetstream::new(client);
    let name = kind.stream();
    let stream = js.get_stream(name).await.map_err(|e| {
        anyhow::anyhow!("no stream {name} (has a daemon run against this NATS?): {e}")
    })?;
    let deliver_policy = match since {
        Some(d) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc() - d,
        },
        None => consumer::DeliverPolicy::All,
    };
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: kind.filter(room),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await?.num_pending;
    if format == Format::Csv {
        writeln!(out, "{}", kind.csv_header())?;
    }
    if pending == 0 && !follow {
        return Ok(0);
    }
    let mut messages = consumer.messages().await?;
    let mut written = 0u64;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let remaining = msg.info().map(|i| i.pending).unwrap_or(0);
        let line = match format {
            Format::Jsonl => std::str::from_utf8(&msg.payload)
                .map(str::to_owned)
                .map_err(|e| e.to_string()),
            Format::Csv => csv_line(kind, &msg.payload),
        };
        match line {
            Ok(line) => {
                writeln!(out, "{line}")?;
                written += 1;
                if follow {
                    out.flush()?;
                }
            }
            Err(e) => eprintln!("skipping an unreadable message on {}: {e}", msg.subject),
        }
        if remaining == 0 && !follow {
            break;
        }
    }
    out.flush()?;
    Ok(written)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn trend(t: Option<Trend>) -> &'static str {
    match t {
        Some(Trend::Rising) => "rising",
        Some(Trend::Falling) => "falling",
        Some(Trend::Steady) => "steady",
        None => "",
    }
}

/// One CSV line for a stored message of `kind`.
fn csv_line(kind: Kind, payload: &[u8]) -> Result<String, String> {
    let e = |e: serde_json::Error| e.to_string();
    Ok(match kind {
        Kind::Result => {
            let r: ResultMessage = serde_json::from_slice(payload).map_err(e)?;
            let top_score = r
                .output
                .top
                .as_ref()
                .and_then(|t| r.output.labels.get(t))
                .copied();
            format!(
                "{:.3},{},{},{},{},{},{},{},{},{:.3}",
                r.capture_ms,
                r.room,
                r.participant,
                csv(&r.model),
                csv(&r.version),
                r.media.as_str(),
                r.seq,
                csv(r.output.top.as_deref().unwrap_or("")),
                top_score.map(|s| format!("{s:.6}")).unwrap_or_default(),
                r.latency_ms
            )
        }
        Kind::Room => {
            let m: RoomMood = serde_json::from_slice(payload).map_err(e)?;
            let emotions: Vec<String> =
                m.emotions.iter().map(|(k, n)| format!("{k}={n}")).collect();
            format!(
                "{:.0},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                m.at_ms,
                m.room,
                csv(m.presenter.as_deref().unwrap_or("")),
                m.presenter_source.as_deref().unwrap_or(""),
                m.participants,
                m.contributors,
                m.published,
                opt(m.valence),
                opt(m.arousal),
                opt(m.attentive_share),
                trend(m.valence_trend),
                trend(m.arousal_trend),
                csv(&emotions.join(";")),
                csv(m.expressions.as_ref().map_or("", |x| x.text.as_str()))
            )
        }
        Kind::State => {
            let s: ParticipantState = serde_json::from_slice(payload).map_err(e)?;
            format!(
                "{:.0},{},{},{},{},{},{},{},{},{}",
                s.at_ms,
                s.room,
                s.participant,
                opt(s.valence),
                opt(s.arousal),
                csv(s.emotion.as_deref().unwrap_or("")),
                s.confidence,
                opt(s.face_visible),
                opt(s.speaking),
                opt(s.attentive)
            )
        }
    })
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
