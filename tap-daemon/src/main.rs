//! `kurento-tap`: not built yet — the tap daemon is the next issue. This binary says so instead of
//! pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!("kurento-tap: the tap daemon is not implemented yet (see the tap-daemon issue)");
    std::process::ExitCode::from(2)
}
