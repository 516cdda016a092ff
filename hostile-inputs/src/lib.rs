//! Mutation fuzzing on the stable toolchain.
//!
//! Every parser of untrusted input the product has (KMS's JSON-RPC frames, SDP answers, chunk
//! headers and payload sizes, worker replies, registry entries, control requests, the config file)
//! is a [`Target`]: real inputs as seeds, a dictionary of tokens that matter to its grammar, and a
//! `check` that runs the product's own parsing code on an input and asserts what must hold of what
//! it accepted. [`fuzz`] mutates the seeds with a seeded RNG (reproducible: a seed and an input
//! index name an input), runs each input under `catch_unwind`, and counts accepted, rejected and
//! panicking inputs. A panic is a bug: the product must answer every input with a value or an error.
//!
//! Why not `cargo-fuzz`: it needs a nightly toolchain that these machines do not have. Coverage
//! guidance is replaced by grammar-aware seeds and dictionaries; what this loses in depth it gains in
//! running everywhere, in CI included.

pub mod mutate;
pub mod targets;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use mutate::Mutator;

/// What the product made of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Parsed and used.
    Accepted,
    /// Refused with an error (the expected outcome for most mutations).
    Rejected,
}

/// One parser under test.
pub trait Target: Sync {
    /// Short name (CLI and reports).
    fn name(&self) -> &'static str;
    /// Valid inputs, as the product sees them in real use.
    fn seeds(&self) -> Vec<Vec<u8>>;
    /// Tokens of the input's grammar, spliced in by the mutator.
    fn dictionary(&self) -> &'static [&'static str];
    /// Runs the product's code on `input`; panics (through `assert!`) when an accepted input
    /// breaks an invariant.
    fn check(&self, input: &[u8]) -> Verdict;
    /// How many times dearer one input is than a plain parse (a budget of N inputs gives this
    /// target N / cost): a target that builds a DTLS context per input runs at ~1,000/s.
    fn cost(&self) -> u64 {
        1
    }
}

/// The first panic seen.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Index of the input (with the run's seed, it reproduces the input).
    pub index: u64,
    /// The input.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Target name.
    pub target: &'static str,
    /// Inputs run.
    pub inputs: u64,
    /// Accepted inputs.
    pub accepted: u64,
    /// Rejected inputs.
    pub rejected: u64,
    /// Inputs that panicked.
    pub panics: u64,
    /// The first panic.
    pub first_panic: Option<Finding>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

thread_local! {
    /// The message of the last panic on this thread (the hook below keeps it instead of printing it).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// This thread is inside [`fuzz`]: its panics are kept, not printed.
    static IN_FUZZ: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once per process, a panic hook that keeps the message of a panic inside [`fuzz`]
/// (a million inputs may panic a million times) and hands every other panic to the hook it
/// replaced. Installed once, never restored: hooks swapped per run would race between threads.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_FUZZ.with(|f| f.get()) {
                return previous(info);
            }
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-text panic)".into());
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("{payload}{location}")));
        }));
    });
}

/// Runs `inputs` mutated inputs through `target` (deterministic for a given `seed`).
///
/// Panics are caught and counted, not printed (see [`install_panic_hook`]).
pub fn fuzz(target: &dyn Target, inputs: u64, seed: u64) -> Report {
    let seeds = target.seeds();
    assert!(!seeds.is_empty(), "target {} has no seeds", target.name());
    let mut mutator = Mutator::new(seed, target.dictionary());
    install_panic_hook();
    IN_FUZZ.with(|f| f.set(true));
    let mut report = Report {
        target: target.name(),
        inputs,
        accepted: 0,
        rejected: 0,
        panics: 0,
        first_panic: None,
        elapsed: Duration::ZERO,
    };
    let started = Instant::now();
    for index in 0..inputs {
        // Every 16th input is a seed as is, so both verdicts keep occurring however deep the
        // mutations go.
        let input = if index % 16 == 0 {
            seeds[(index / 16) as usize % seeds.len()].clone()
        } else {
            mutator.mutate(&seeds)
        };
        match panic::catch_unwind(AssertUnwindSafe(|| target.check(&input))) {
            Ok(Verdict::Accepted) => report.accepted += 1,
            Ok(Verdict::Rejected) => report.rejected += 1,
            Err(_) => {
                report.panics += 1;
                if report.first_panic.is_none() {
                    let message = LAST_PANIC
                        .with(|last| last.borrow_mut().take())
                        .unwrap_or_default();
                    report.first_panic = Some(Finding {
                        index,
                        input,
                        message,
                    });
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    IN_FUZZ.with(|f| f.set(false));
    report
}

/// An input shown for a human: UTF-8 with escapes, cut at `max` characters.
pub fn show_input(input: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(input);
    let escaped: String = text.escape_debug().collect();
    if escaped.chars().count() > max {
        let cut: String = escaped.chars().take(max).collect();
        format!("{cut}… ({} bytes)", input.len())
    } else {
        escaped
    }
}
