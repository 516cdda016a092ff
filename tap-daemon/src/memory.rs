//! The process's allocator settings: one glibc malloc arena unless the operator chose otherwise.
//!
//! Why: glibc gives each thread that allocates under contention an arena of its own (up to 8 per
//! core), and memory freed into one arena is not reused by another. The daemon's media threads
//! (GStreamer's streaming or shared receive threads, libvpx, the tokio workers) allocate and free
//! frames and packets across threads, so with the default every arena grew its own high-water mark:
//! measured with the `taps` bench (docs/benchmarks.md), one arena took the marginal RSS of a tapped
//! participant from 1.65 to 1.45 MiB on shared receive threads and the process from 141 to 129 MiB
//! at 50 participants on rtpbin per tap, at the same CPU (per-thread caches serve most small
//! allocations without touching an arena's lock).
//!
//! The operator's choice wins: `MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in
//! `GLIBC_TUNABLES`, leaves glibc as the environment sets it.

/// Arenas the daemon asks glibc for when the environment does not say.
pub const DEFAULT_ARENAS: i32 = 1;

/// Where the arena limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaLimit {
    /// Set by the daemon to this many arenas.
    Daemon(i32),
    /// Left to the environment (`MALLOC_ARENA_MAX` or `GLIBC_TUNABLES`).
    Environment,
    /// Not a glibc target: nothing to set.
    NotGlibc,
}

impl std::fmt::Display for ArenaLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArenaLimit::Daemon(n) => write!(f, "{n} (kurento-tap's default)"),
            ArenaLimit::Environment => {
                f.write_str("as the environment sets (MALLOC_ARENA_MAX or GLIBC_TUNABLES)")
            }
            ArenaLimit::NotGlibc => f.write_str("not glibc: the allocator's own"),
        }
    }
}

/// The arena limit to apply, given the environment (`var` reads a variable): `None` when the
/// operator set one (pure).
pub fn arena_limit(var: impl Fn(&str) -> Option<String>) -> Option<i32> {
    if var("MALLOC_ARENA_MAX").is_some_and(|v| !v.trim().is_empty()) {
        return None;
    }
    // GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0 (colon-separated).
    let tuned = var("GLIBC_TUNABLES").is_some_and(|t| {
        t.split(':')
            .any(|kv| kv.split('=').next() == Some("glibc.malloc.arena_max"))
    });
    if tuned {
        return None;
    }
    Some(DEFAULT_ARENAS)
}

/// Applies [`arena_limit`] to this process. Call it first in `main`, before any thread exists:
/// arenas already made stay.
pub fn limit_malloc_arenas() -> ArenaLimit {
    let Some(n) = arena_limit(|k| std::env::var(k).ok()) else {
        return ArenaLimit::Environment;
    };
    apply(n)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply(n: i32) -> ArenaLimit {
    // SAFETY: mallopt only changes the allocator's parameters; M_ARENA_MAX is valid on glibc.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
    if ok == 1 {
        ArenaLimit::Daemon(n)
    } else {
        ArenaLimit::Environment
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply(_n: i32) -> ArenaLimit {
    ArenaLimit::NotGlibc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn one_arena_unless_the_environment_says() {
        assert_eq!(arena_limit(env(&[])), Some(1));
        assert_eq!(arena_limit(env(&[("MALLOC_ARENA_MAX", "4")])), None);
        assert_eq!(
            arena_limit(env(&[(
                "GLIBC_TUNABLES",
                "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=8"
            )])),
            None
        );
    }

    #[test]
    fn other_tunables_and_empty_values_do_not_count_as_a_choice() {
        assert_eq!(
            arena_limit(env(&[("GLIBC_TUNABLES", "glibc.malloc.arena_test=2")])),
            Some(1),
            "arena_test is not arena_max"
        );
        assert_eq!(arena_limit(env(&[("MALLOC_ARENA_MAX", " ")])), Some(1));
    }

    #[test]
    fn applying_reports_what_was_done() {
        // The test process already has threads; mallopt still accepts the setting.
        let applied = limit_malloc_arenas();
        if std::env::var("MALLOC_ARENA_MAX").is_err() && std::env::var("GLIBC_TUNABLES").is_err() {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            assert_eq!(applied, ArenaLimit::Daemon(1));
        }
    }
}
