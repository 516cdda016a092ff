# The test step shared by scripts/test and scripts/stress-test (sourced, not run).
# run_test_step OUT: every test of the workspace, the real-KMS tier last; the output goes to the
# terminal and to OUT; the status is the first failure's.
run_test_step() {
  local out="$1" status=0
  : >"$out"
  # The real-KMS tier runs after the rest, on its own: each of its tests is a whole call (KMS, three
  # Chromium participants, the daemon and workers) and would starve the others on 2 cores.
  cargo test --workspace --locked --no-fail-fast -- --skip real_kms_ 2>&1 | tee -a "$out" || status=$?
  echo "== real-KMS tier (KMS 7.3 from ${KURENTO_TAP_KMS_BUNDLE:-../shared/kms}, Chromium participants)"
  if [ ! -x "${KURENTO_TAP_KMS_BUNDLE:-../shared/kms}/start" ]; then
    echo "*** SKIPPED: the real-KMS tier needs the KMS bundle at ../shared/kms (or \$KURENTO_TAP_KMS_BUNDLE) ***"
  fi
  cargo test -p tap-daemon --test real_kms --locked --no-fail-fast -- --test-threads=1 real_kms_ 2>&1 | tee -a "$out" || {
    local s=$?
    [ "$status" -ne 0 ] || status=$s
  }
  return "$status"
}

# test_totals OUT: one line, totals over every test binary in OUT.
test_totals() {
  awk '/^test result:/ {p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d skipped\n", p, f, i}' "$1"
}
