//! `kurento-tap results`: tails or exports the results stream.

use std::io::Write;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tap_protocol::{safe_token, ResultMessage, RESULTS_STREAM};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line, as stored.
    Jsonl,
    /// `capture_ms,room,participant,model,version,media,seq,top,top_score,latency_ms`.
    Csv,
}

/// Writes every stored result (of `room`, if given) to `out`; with `follow`, keeps writing new ones.
/// Returns how many were written. Malformed entries are skipped and reported on stderr.
pub async fn export(
    client: async_nats::Client,
    room: Option<&str>,
    follow: bool,
    format: Format,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u64> {
    let js = jetstream::new(client);
    let stream = js.get_stream(RESULTS_STREAM).await.map_err(|e| {
        anyhow::anyhow!(
            "no results stream {RESULTS_STREAM} (has a daemon run against this NATS?): {e}"
        )
    })?;
    let filter = match room {
        Some(r) => format!("tap.v1.result.{}.>", safe_token(r)),
        None => "tap.v1.result.>".to_owned(),
    };
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await?.num_pending;
    if format == Format::Csv {
        writeln!(
            out,
            "capture_ms,room,participant,model,version,media,seq,top,top_score,latency_ms"
        )?;
    }
    if pending == 0 && !follow {
        return Ok(0);
    }
    let mut messages = consumer.messages().await?;
    let mut written = 0u64;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let remaining = msg.info().map(|i| i.pending).unwrap_or(0);
        match serde_json::from_slice::<ResultMessage>(&msg.payload) {
            Ok(r) => {
                match format {
                    Format::Jsonl => out.write_all(&msg.payload)?,
                    Format::Csv => {
                        let top_score = r
                            .output
                            .top
                            .as_ref()
                            .and_then(|t| r.output.labels.get(t))
                            .copied();
                        write!(
                            out,
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
                        )?;
                    }
                }
                writeln!(out)?;
                written += 1;
                if follow {
                    out.flush()?;
                }
            }
            Err(e) => eprintln!("skipping an unreadable result on {}: {e}", msg.subject),
        }
        if remaining == 0 && !follow {
            break;
        }
    }
    out.flush()?;
    Ok(written)
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
