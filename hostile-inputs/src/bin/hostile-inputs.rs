//! Runs every parser of untrusted input through mutated inputs and prints, per parser, inputs/s,
//! accepted, rejected and panics (must be 0). Exit status 1 if any input panicked.
//!
//!   cargo run --release -p hostile-inputs -- --inputs 1000000

use std::process::ExitCode;

use clap::Parser;
use hostile_inputs::{fuzz, show_input, targets};

#[derive(Parser)]
#[command(about = "Mutation fuzzing of every parser of untrusted input (stable toolchain)")]
struct Args {
    /// Inputs per parser.
    #[arg(long, default_value_t = 1_000_000)]
    inputs: u64,
    /// RNG seed (a seed and an input index name an input).
    #[arg(long, default_value_t = 0x6b75_7265_6e74_6f)]
    seed: u64,
    /// Only these parsers (jsonrpc, sdp, chunk, reply, registry, control, config).
    #[arg(long = "target")]
    targets: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let all = targets::all();
    let known: Vec<&str> = all.iter().map(|t| t.name()).collect();
    if let Some(unknown) = args.targets.iter().find(|t| !known.contains(&t.as_str())) {
        eprintln!("unknown target {unknown:?}; known: {}", known.join(", "));
        return ExitCode::from(2);
    }
    println!(
        "{:<9} {:>10} {:>12} {:>10} {:>10} {:>7}",
        "parser", "inputs", "inputs/s", "accepted", "rejected", "panics"
    );
    let mut panicked = false;
    for target in all
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name()))
    {
        let r = fuzz(
            target.as_ref(),
            args.inputs / target.cost().max(1),
            args.seed,
        );
        println!(
            "{:<9} {:>10} {:>12.0} {:>10} {:>10} {:>7}",
            r.target,
            r.inputs,
            r.rate(),
            r.accepted,
            r.rejected,
            r.panics
        );
        if let Some(f) = &r.first_panic {
            panicked = true;
            println!(
                "  first panic: input #{} (seed {:#x}): {}\n  input: {}",
                f.index,
                args.seed,
                f.message,
                show_input(&f.input, 600)
            );
        }
    }
    if panicked {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
