# Helpers for scripts that start services (sourced, not run).

# service CMD [ARGS...]: runs CMD in a session of its own (so Ctrl-C reaches only the calling script,
# which then stops its services in order) that still ends with the script however the script ends:
# SIGKILL, a closed terminal, a crash. The kernel sends CMD SIGTERM when its parent (the script)
# dies: PR_SET_PDEATHSIG, set by util-linux's setpriv just before it execs CMD. setsid comes first
# because the death signal is cleared in a forked child (setsid forks when it must).
# Use it only in the background, as `service CMD ARGS... >LOG 2>&1 & pids+=($!)`: it execs, so the
# background subshell becomes CMD (its pid is $!, its parent the script).
service() {
  exec setsid setpriv --pdeathsig TERM -- "$@"
}

# with_parent CMD [ARGS...]: CMD in the caller's session, ending when the caller dies (for the
# foreground pipelines of a script, which a SIGKILL of the script would otherwise orphan). Only as
# an element of a pipeline or in the background: it execs.
with_parent() {
  exec setpriv --pdeathsig TERM -- "$@"
}
