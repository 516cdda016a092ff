//! The model author's template: a complete kurento-tap worker in one file.
//!
//! `cargo run -p brightness-worker -- nats://127.0.0.1:4222`
//!
//! Per participant frame (64x48 gray, 4 per second): mean brightness, and motion as the mean absolute
//! difference from the previous frame of the same participant.

use std::collections::HashMap;

use classifier_sdk::*;

#[derive(Default)]
struct Brightness {
    previous: HashMap<String, Vec<u8>>,
}

impl Classifier for Brightness {
    fn spec(&self) -> ModelSpec {
        ModelSpec::video(
            "brightness",
            "1",
            VideoChunkSpec::fps(4.0, 64, 48, PixelFormat::Gray8),
            &["brightness", "motion"],
        )
    }

    fn predict(&mut self, chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError> {
        let Data::Video(frame) = &chunk.data else {
            return Err(ClassifierError::Unsupported);
        };
        let n = frame.pixels.len() as f64;
        let brightness = frame.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / n / 255.0;
        let key = format!("{}/{}", chunk.meta.room, chunk.meta.participant);
        let motion = match self.previous.get(&key) {
            Some(prev) if prev.len() == frame.pixels.len() => {
                prev.iter()
                    .zip(frame.pixels)
                    .map(|(&a, &b)| f64::from(a.abs_diff(b)))
                    .sum::<f64>()
                    / n
                    / 255.0
            }
            _ => 0.0,
        };
        self.previous.insert(key, frame.pixels.to_vec());
        Ok(Prediction::scores([
            ("brightness", brightness),
            ("motion", motion),
        ]))
    }
}

#[tokio::main]
async fn main() -> Result<(), WorkerError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let nats = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    Worker::new(Brightness::default)
        .options(WorkerOptions::new(nats))
        .run(shutdown_signal())
        .await
}
