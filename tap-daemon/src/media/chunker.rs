//! Cuts one participant's decoded media into the chunks each live model asks for. One decoded
//! stream feeds every spec; specs are read on every frame, so models that appear, change or leave
//! take effect at the next frame without touching the GStreamer pipeline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer_video as gst_video;
use tap_protocol::{
    AudioChunkSpec, MediaKind, ModelId, ModelSpec, PixelFormat, SampleFormat, VideoChunkSpec,
};

use crate::media::receiver::{DecodedAudio, DecodedFrame, MediaSink};

/// The live model specs, shared by every tap (replaced wholesale by the registry).
pub type LiveSpecs = Arc<RwLock<Arc<Vec<Arc<ModelSpec>>>>>;

/// A chunk ready to dispatch.
pub struct Chunk {
    /// The spec it was cut for.
    pub spec: Arc<ModelSpec>,
    /// Capture time of its first sample, Unix µs.
    pub capture_us: u64,
    /// The payload laid out as the spec says.
    pub payload: Bytes,
}

/// Receives chunks (the dispatcher).
pub trait ChunkSink: Send + Sync + 'static {
    /// Offers a chunk; never blocks.
    fn offer(&self, chunk: Chunk);
    /// A frame was converted for a model (for metrics).
    fn converted(&self, _model: &ModelId, _micros: u64) {}
}

struct VideoState {
    spec: VideoChunkSpec,
    /// The spec's output layout, made once (`None`: a size GStreamer refuses; nothing converted).
    out: Option<gst_video::VideoInfo>,
    frames_seen: u64,
    next_due_us: u64,
}

/// A converter for one input layout to one output layout.
struct Converter {
    /// The decoder's layout this converter was made for.
    decoded: gst_video::VideoInfo,
    /// That layout with the output's frame rate (the converter insists they match).
    input: gst_video::VideoInfo,
    out: gst_video::VideoInfo,
    converter: gst_video::VideoConverter,
}

/// Video converters shared by every tap's chunker, taken for one frame and put back.
///
/// Why shared: a converter (scaler taps and line caches) takes ~135 KB for 320x240 to a model's
/// size (heaptrack, docs/benchmarks.md) and works a few hundred µs per chunk, a few times a
/// second; one per tap and model kept fifty idle for each one in use. Shared, there are as many as
/// convert at once (on shared receive threads, one per thread) for each layout.
#[derive(Default)]
pub struct ConverterPool {
    /// Idle converters, the most recently used last.
    idle: Mutex<Vec<Converter>>,
}

impl ConverterPool {
    /// Idle converters kept at most (beyond, the least recently used is dropped): bounds the pool
    /// when participants send many sizes.
    pub const MAX_IDLE: usize = 32;

    /// A converter from `decoded` to `out`: an idle one, or a new one.
    fn take(
        &self,
        decoded: &gst_video::VideoInfo,
        out: &gst_video::VideoInfo,
    ) -> Option<Converter> {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = idle
                .iter()
                .rposition(|c| c.decoded == *decoded && c.out == *out)
            {
                return Some(idle.remove(i));
            }
        }
        // The converter refuses frame-rate changes; rates are irrelevant for one frame.
        let input = gst_video::VideoInfo::builder_from_info(decoded)
            .fps(out.fps())
            .build()
            .ok()?;
        let converter = gst_video::VideoConverter::new(&input, out, None).ok()?;
        Some(Converter {
            decoded: decoded.clone(),
            input,
            out: out.clone(),
            converter,
        })
    }

    fn put(&self, converter: Converter) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= Self::MAX_IDLE {
            idle.remove(0);
        }
        idle.push(converter);
    }

    /// Converters idle now.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

struct AudioState {
    spec: AudioChunkSpec,
    decimator: Decimator,
    /// Samples at the spec's rate, mono.
    buffered: Vec<f32>,
    /// Capture time of `buffered[0]`, Unix µs.
    start_us: Option<u64>,
    /// Samples still to discard before the next window starts (hop > window).
    skip: usize,
}

/// A buffer this much later than the samples before it end means audio was lost (a lost packet the
/// decoder did not conceal): the gap is filled with silence so that window times stay true.
const AUDIO_GAP_US: i64 = 60_000;
/// Beyond this, a gap or a backward jump is not filled: the windows start afresh.
const AUDIO_RESYNC_US: i64 = 500_000;

/// One tap's chunker.
pub struct Chunker {
    specs: LiveSpecs,
    sink: Arc<dyn ChunkSink>,
    converters: Arc<ConverterPool>,
    video: Mutex<HashMap<ModelId, VideoState>>,
    audio: Mutex<HashMap<ModelId, AudioState>>,
}

impl Chunker {
    /// A chunker reading `specs`, converting frames with `converters` (shared by every tap), and
    /// handing chunks to `sink`.
    pub fn new(specs: LiveSpecs, sink: Arc<dyn ChunkSink>, converters: Arc<ConverterPool>) -> Self {
        Chunker {
            specs,
            sink,
            converters,
            video: Mutex::default(),
            audio: Mutex::default(),
        }
    }

    /// The live specs (a shared snapshot: no copy per frame).
    fn current(&self) -> Arc<Vec<Arc<ModelSpec>>> {
        self.specs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn out_info(spec: &VideoChunkSpec) -> Option<gst_video::VideoInfo> {
    let (w, h) = (spec.width, spec.height);
    let (format, strides, offsets): (_, Vec<i32>, Vec<usize>) = match spec.format {
        PixelFormat::Rgb24 => (gst_video::VideoFormat::Rgb, vec![(w * 3) as i32], vec![0]),
        PixelFormat::Gray8 => (gst_video::VideoFormat::Gray8, vec![w as i32], vec![0]),
        PixelFormat::I420 => {
            let (cw, ch) = (w.div_ceil(2) as usize, h.div_ceil(2) as usize);
            let y = w as usize * h as usize;
            (
                gst_video::VideoFormat::I420,
                vec![w as i32, cw as i32, cw as i32],
                vec![0, y, y + cw * ch],
            )
        }
    };
    // Tightly packed rows, as the protocol promises (GStreamer would pad rows to 4 bytes).
    gst_video::VideoInfo::builder(format, w, h)
        .stride(&strides)
        .offset(&offsets)
        .build()
        .ok()
}

impl VideoState {
    fn new(spec: VideoChunkSpec) -> Self {
        VideoState {
            out: out_info(&spec),
            spec,
            frames_seen: 0,
            next_due_us: 0,
        }
    }

    fn due(&mut self, capture_us: u64) -> bool {
        self.frames_seen += 1;
        match (self.spec.every_nth, self.spec.fps) {
            (Some(n), _) => (self.frames_seen - 1).is_multiple_of(u64::from(n.max(1))),
            (None, Some(fps)) => {
                let interval = (1e6 / fps) as u64;
                if capture_us + interval / 4 < self.next_due_us {
                    return false;
                }
                // Keep the cadence, but never build up a burst after a gap.
                self.next_due_us =
                    (self.next_due_us + interval).max(capture_us + interval - interval / 4);
                true
            }
            (None, None) => false,
        }
    }

    fn convert(&self, frame: &DecodedFrame, pool: &ConverterPool) -> Option<Bytes> {
        let c = pool.take(&frame.info, self.out.as_ref()?)?;
        let converted = convert_with(&c, frame);
        pool.put(c);
        converted
    }
}

fn convert_with(c: &Converter, frame: &DecodedFrame) -> Option<Bytes> {
    let in_frame =
        gst_video::VideoFrameRef::from_buffer_ref_readable(frame.buffer.as_ref(), &c.input).ok()?;
    let mut buffer = gst::Buffer::with_size(c.out.size()).ok()?;
    {
        let buf = buffer.get_mut()?;
        let mut out_frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &c.out).ok()?;
        c.converter.frame_ref(&in_frame, &mut out_frame);
    }
    let mapped = buffer.into_mapped_buffer_readable().ok()?;
    Some(Bytes::from_owner(mapped))
}

impl MediaSink for Chunker {
    fn video(&self, frame: DecodedFrame) {
        let all = self.current();
        let specs = || all.iter().filter(|s| s.media == MediaKind::Video);
        let mut states = self.video.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|id, _| specs().any(|s| s.id == *id));
        for spec in specs() {
            let Some(v) = spec.video else { continue };
            let state = states
                .entry(spec.id.clone())
                .or_insert_with(|| VideoState::new(v));
            if state.spec != v {
                *state = VideoState::new(v);
            }
            if !state.due(frame.capture_us) {
                continue;
            }
            let started = std::time::Instant::now();
            if let Some(payload) = state.convert(&frame, &self.converters) {
                self.sink
                    .converted(&spec.id, started.elapsed().as_micros() as u64);
                self.sink.offer(Chunk {
                    spec: spec.clone(),
                    capture_us: frame.capture_us,
                    payload,
                });
            }
        }
    }

    fn audio(&self, audio: DecodedAudio<'_>) {
        let all = self.current();
        let specs = || all.iter().filter(|s| s.media == MediaKind::Audio);
        let mut states = self.audio.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|id, _| specs().any(|s| s.id == *id));
        for spec in specs() {
            let Some(a) = spec.audio else { continue };
            let state = states
                .entry(spec.id.clone())
                .or_insert_with(|| AudioState::new(a));
            if state.spec != a {
                *state = AudioState::new(a);
            }
            for (capture_us, payload) in state.push(audio.samples, audio.capture_us) {
                self.sink.offer(Chunk {
                    spec: spec.clone(),
                    capture_us,
                    payload,
                });
            }
        }
    }
}

impl AudioState {
    fn new(spec: AudioChunkSpec) -> Self {
        AudioState {
            decimator: Decimator::new((48_000 / spec.sample_rate.max(1)) as usize),
            spec,
            buffered: Vec::new(),
            start_us: None,
            skip: 0,
        }
    }

    /// Adds 48 kHz samples; returns every complete window.
    ///
    /// Window times come from counting samples, so every buffer's capture time is checked against
    /// the count: lost audio would otherwise make each later window look older by the loss (5 %
    /// packet loss on a real KMS: a second behind after 20 s, every voice chunk stale from then on).
    fn push(&mut self, input: &[f32], capture_us: u64) -> Vec<(u64, Bytes)> {
        let rate = u64::from(self.spec.sample_rate);
        if let (Some(start), false, 0) = (self.start_us, self.buffered.is_empty(), self.skip) {
            let expected = start + self.buffered.len() as u64 * 1_000_000 / rate.max(1);
            let gap = capture_us as i64 - expected as i64;
            if gap.abs() > AUDIO_RESYNC_US {
                self.buffered.clear();
                self.start_us = None;
            } else if gap > AUDIO_GAP_US {
                let missing = (gap as u64 * rate / 1_000_000) as usize;
                self.buffered.resize(self.buffered.len() + missing, 0.0);
            } else if gap < -AUDIO_GAP_US {
                // Samples arrive earlier than counted (the sender's clock is faster than the
                // count): the buffered audio is re-dated to end where this buffer begins.
                self.start_us = Some(start.saturating_sub(gap.unsigned_abs()));
            }
        }
        let mut resampled = Vec::with_capacity(input.len() / self.decimator.factor + 1);
        self.decimator.process(input, &mut resampled);
        let mut fresh = &resampled[..];
        if self.skip > 0 {
            let n = self.skip.min(fresh.len());
            self.skip -= n;
            fresh = &fresh[n..];
            if fresh.is_empty() {
                return Vec::new();
            }
            // The kept part starts n samples after this buffer's capture time.
            self.start_us = Some(capture_us + n as u64 * 1_000_000 / rate);
        }
        if self.buffered.is_empty() && self.start_us.is_none() {
            self.start_us = Some(capture_us);
        }
        self.buffered.extend_from_slice(fresh);
        let window = (rate * u64::from(self.spec.window_ms) / 1000) as usize;
        let hop = (rate * u64::from(self.spec.hop_ms) / 1000) as usize;
        let mut out = Vec::new();
        while self.buffered.len() >= window && window > 0 {
            let start = self.start_us.unwrap_or(capture_us);
            out.push((
                start,
                encode(
                    &self.buffered[..window],
                    self.spec.channels,
                    self.spec.format,
                ),
            ));
            let drop = hop.min(self.buffered.len());
            self.buffered.drain(..drop);
            self.skip = hop.saturating_sub(drop);
            self.start_us = Some(start + hop as u64 * 1_000_000 / rate);
        }
        // Bounded: never more than one window plus one buffer of audio is held.
        out
    }
}

fn encode(samples: &[f32], channels: u16, format: SampleFormat) -> Bytes {
    let mut out = Vec::with_capacity(samples.len() * channels as usize * format.bytes());
    for &s in samples {
        for _ in 0..channels {
            match format {
                SampleFormat::F32 => out.extend_from_slice(&s.to_le_bytes()),
                SampleFormat::S16 => {
                    let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    Bytes::from(out)
}

/// Integer-factor decimation with a windowed-sinc low-pass (cut-off at 0.9 × the new Nyquist).
pub struct Decimator {
    factor: usize,
    taps: Vec<f32>,
    history: Vec<f32>,
    phase: usize,
}

impl Decimator {
    /// Decimates by `factor` (1 = pass-through).
    pub fn new(factor: usize) -> Self {
        let factor = factor.max(1);
        let taps = if factor == 1 {
            vec![1.0]
        } else {
            let n = 16 * factor + 1;
            let cutoff = 0.9 / (2.0 * factor as f64);
            let mid = (n / 2) as f64;
            let mut t: Vec<f64> = (0..n)
                .map(|i| {
                    let x = i as f64 - mid;
                    let sinc = if x == 0.0 {
                        2.0 * cutoff
                    } else {
                        (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
                    };
                    let w = 0.42
                        - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos()
                        + 0.08 * (4.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos();
                    sinc * w
                })
                .collect();
            let sum: f64 = t.iter().sum();
            t.iter_mut().for_each(|v| *v /= sum);
            t.into_iter().map(|v| v as f32).collect()
        };
        Decimator {
            factor,
            history: vec![0.0; taps.len() - 1],
            taps,
            phase: 0,
        }
    }

    /// Filters and decimates `input`, appending to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.factor == 1 {
            out.extend_from_slice(input);
            return;
        }
        let n = self.taps.len();
        self.history.extend_from_slice(input);
        let mut i = self.phase;
        while i + n <= self.history.len() {
            let acc: f32 = self.history[i..i + n]
                .iter()
                .zip(&self.taps)
                .map(|(a, b)| a * b)
                .sum();
            out.push(acc);
            i += self.factor;
        }
        let consumed = i.min(self.history.len().saturating_sub(n - 1));
        self.history.drain(..consumed);
        self.phase = i - consumed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimator_keeps_low_tones_and_removes_high_ones() {
        let tone = |f: f64| -> Vec<f32> {
            (0..48_000)
                .map(|i| (2.0 * std::f64::consts::PI * f * i as f64 / 48_000.0).sin() as f32)
                .collect()
        };
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let mut d = Decimator::new(3);
        let mut out = Vec::new();
        for chunk in tone(440.0).chunks(960) {
            d.process(chunk, &mut out);
        }
        assert!((out.len() as i64 - 16_000).abs() < 40, "{}", out.len());
        assert!(
            (rms(&out[200..]) - 0.707).abs() < 0.02,
            "440 Hz passes: {}",
            rms(&out[200..])
        );
        let mut d = Decimator::new(3);
        let mut out = Vec::new();
        d.process(&tone(12_000.0), &mut out);
        assert!(
            rms(&out[200..]) < 0.01,
            "12 kHz is filtered: {}",
            rms(&out[200..])
        );
    }

    #[test]
    fn audio_windows_follow_window_and_hop() {
        let spec = AudioChunkSpec {
            window_ms: 100,
            hop_ms: 50,
            sample_rate: 16_000,
            channels: 1,
            format: SampleFormat::S16,
        };
        let mut st = AudioState::new(spec);
        let mut windows = Vec::new();
        for i in 0..50u64 {
            // 20 ms buffers at 48 kHz.
            windows.extend(st.push(&[0.1; 960], 1_000_000 + i * 20_000));
        }
        // 1 s of audio, 100 ms windows every 50 ms: 19 windows.
        assert!((18..=19).contains(&windows.len()), "{}", windows.len());
        assert!(windows.iter().all(|(_, b)| b.len() == 1600 * 2));
        let starts: Vec<u64> = windows.iter().map(|(t, _)| *t).collect();
        assert!(
            starts.windows(2).all(|w| w[1] - w[0] == 50_000),
            "{starts:?}"
        );
    }

    fn voice_spec() -> AudioChunkSpec {
        AudioChunkSpec {
            window_ms: 1000,
            hop_ms: 500,
            sample_rate: 16_000,
            channels: 1,
            format: SampleFormat::F32,
        }
    }

    #[test]
    fn lost_audio_does_not_age_later_windows() {
        let mut st = AudioState::new(voice_spec());
        let mut windows = Vec::new();
        // 20 s of 20 ms packets with every 20th lost (5 %), each stamped with its true time.
        for i in 0..1000u64 {
            if i % 20 == 7 {
                continue;
            }
            let at = 1_000_000 + i * 20_000;
            for (start, _) in st.push(&[0.1; 960], at) {
                windows.push((start, at));
            }
        }
        // The last window ends where the last buffer does: its start is one window before.
        let (start, pushed_at) = *windows.last().unwrap();
        let age = pushed_at as i64 + 20_000 - start as i64;
        assert!(
            (age - 1_000_000).abs() <= 60_000,
            "window start {age} µs before the end of the audio"
        );
        // Still every 0.5 s (the silence fills the gaps).
        assert!((38..=39).contains(&windows.len()), "{}", windows.len());
    }

    #[test]
    fn a_long_gap_or_a_backward_jump_starts_the_windows_afresh() {
        let mut st = AudioState::new(voice_spec());
        for i in 0..30u64 {
            st.push(&[0.1; 960], i * 20_000);
        }
        // 10 s of nothing (a muted sender), then audio again: no 10 s of silence invented.
        let mut after = Vec::new();
        for i in 0..60u64 {
            after.extend(st.push(&[0.1; 960], 10_600_000 + i * 20_000));
        }
        assert!(!after.is_empty());
        assert!(
            after[0].0 >= 10_600_000,
            "the first window after the gap starts in it: {}",
            after[0].0
        );
        // A sender clock jumping back: windows follow it.
        let mut back = Vec::new();
        for i in 0..60u64 {
            back.extend(st.push(&[0.1; 960], 2_000_000 + i * 20_000));
        }
        assert!(back.iter().all(|(t, _)| *t < 4_000_000), "{back:?}");
    }

    #[test]
    fn jitter_below_the_gap_threshold_changes_nothing() {
        let mut st = AudioState::new(voice_spec());
        let mut starts = Vec::new();
        for i in 0..250u64 {
            let jitter = [0i64, 25_000, -20_000, 10_000][(i % 4) as usize];
            let at = (5_000_000 + i as i64 * 20_000 + jitter) as u64;
            starts.extend(st.push(&[0.1; 960], at).into_iter().map(|(t, _)| t));
        }
        assert!(
            starts.windows(2).all(|w| w[1] - w[0] == 500_000),
            "{starts:?}"
        );
    }

    #[test]
    fn a_hop_longer_than_the_window_skips_audio() {
        let spec = AudioChunkSpec {
            window_ms: 20,
            hop_ms: 100,
            sample_rate: 48_000,
            channels: 2,
            format: SampleFormat::F32,
        };
        let mut st = AudioState::new(spec);
        let mut windows = Vec::new();
        for i in 0..50u64 {
            windows.extend(st.push(&[0.5; 960], i * 20_000));
        }
        assert_eq!(windows.len(), 10);
        assert!(windows.iter().all(|(_, b)| b.len() == 960 * 2 * 4));
        assert_eq!(windows[1].0 - windows[0].0, 100_000);
    }

    /// A grey I420 frame of `w`x`h` as the decoder hands it over.
    fn decoded(w: u32, h: u32) -> DecodedFrame {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, w, h)
            .build()
            .unwrap();
        let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
        buffer.get_mut().unwrap().map_writable().unwrap().fill(128);
        DecodedFrame {
            buffer,
            info,
            capture_us: 1,
        }
    }

    fn rgb(w: u32, h: u32) -> VideoChunkSpec {
        VideoChunkSpec {
            fps: Some(5.0),
            every_nth: None,
            width: w,
            height: h,
            format: PixelFormat::Rgb24,
        }
    }

    #[test]
    fn taps_share_one_converter_per_layout_and_the_pool_stays_bounded() {
        let pool = ConverterPool::default();
        let state = VideoState::new;
        // Fifty taps of the same size, one model: one converter serves them all, and converts
        // what each one would have converted alone.
        let frame = decoded(320, 240);
        for _ in 0..50 {
            let out = state(rgb(80, 60)).convert(&frame, &pool).unwrap();
            assert_eq!(out.len(), 80 * 60 * 3);
            assert!(
                out.iter().all(|&b| (120..=136).contains(&b)),
                "grey stays grey"
            );
        }
        assert_eq!(pool.idle(), 1);
        // Another model size and another input size: one converter each.
        state(rgb(40, 30)).convert(&frame, &pool).unwrap();
        state(rgb(80, 60))
            .convert(&decoded(640, 480), &pool)
            .unwrap();
        assert_eq!(pool.idle(), 3);
        // Many layouts at once: at most MAX_IDLE are kept.
        for w in 1..=(ConverterPool::MAX_IDLE as u32 + 10) {
            state(rgb(w * 2, 2)).convert(&frame, &pool).unwrap();
        }
        assert_eq!(pool.idle(), ConverterPool::MAX_IDLE);
    }

    #[test]
    fn fps_selection_keeps_cadence_without_bursts() {
        gst::init().unwrap();
        let mut v = VideoState::new(VideoChunkSpec {
            fps: Some(5.0),
            every_nth: None,
            width: 8,
            height: 8,
            format: PixelFormat::Gray8,
        });
        // 30 fps for 2 s → 10 frames at 5 fps.
        let picked = (0..60u64).filter(|i| v.due(i * 33_333)).count();
        assert!((10..=11).contains(&picked), "{picked}");
        // After a 5 s gap, one frame, not a burst.
        let after: usize = (0..3u64).filter(|i| v.due(7_000_000 + i * 33_333)).count();
        assert_eq!(after, 1);
    }
}
