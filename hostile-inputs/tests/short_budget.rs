//! CI's budget of the mutation fuzzing: every parser, a few thousand inputs each. No input may
//! panic, and both verdicts must occur (a mutator that only produced rejects, or only seeds, would
//! test nothing). The million-input runs are `cargo run --release -p hostile-inputs`.

use hostile_inputs::{fuzz, show_input, targets, Verdict};

const INPUTS: u64 = 20_000;

#[test]
fn no_parser_panics_on_mutated_inputs() {
    let mut failures = Vec::new();
    for target in targets::all() {
        let inputs = INPUTS / target.cost().max(1);
        let r = fuzz(target.as_ref(), inputs, 0x5eed);
        println!(
            "{:<9} {:>6} inputs  {:>9.0}/s  accepted {:>6}  rejected {:>6}  panics {}",
            r.target,
            r.inputs,
            r.rate(),
            r.accepted,
            r.rejected,
            r.panics
        );
        if let Some(f) = r.first_panic {
            failures.push(format!(
                "{}: {} panics; first #{}: {}\n  input: {}",
                r.target,
                r.panics,
                f.index,
                f.message,
                show_input(&f.input, 600)
            ));
        }
        assert!(
            r.accepted > 0 && r.rejected > inputs / 10,
            "{}: accepted {} rejected {}: the mutations do not reach both outcomes",
            r.target,
            r.accepted,
            r.rejected
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_target_that_panics_is_caught_and_reported() {
    struct Fragile;
    impl hostile_inputs::Target for Fragile {
        fn name(&self) -> &'static str {
            "fragile"
        }
        fn seeds(&self) -> Vec<Vec<u8>> {
            vec![b"12345".to_vec()]
        }
        fn dictionary(&self) -> &'static [&'static str] {
            &["x"]
        }
        fn check(&self, input: &[u8]) -> Verdict {
            let n: u32 = std::str::from_utf8(input).unwrap().parse().unwrap();
            if n > 1 {
                Verdict::Accepted
            } else {
                Verdict::Rejected
            }
        }
    }
    let r = fuzz(&Fragile, 2_000, 1);
    assert!(r.panics > 0, "the harness missed panics");
    let f = r.first_panic.expect("the first panic is kept");
    assert!(f.message.contains("short_budget.rs"), "{}", f.message);
    assert!(!f.input.is_empty() || f.message.contains("Empty"));
}
