#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 60) and fails on the first crash.
#
#   fuzz/run.sh [seconds]          all targets
#   FUZZ_TARGETS="decode payload" fuzz/run.sh 600
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly --profile
# minimal && cargo install cargo-fuzz`). New inputs go to fuzz/corpus/<target> (not committed);
# the committed seeds in fuzz/seeds/<target> are read too. A crash leaves its input in
# fuzz/artifacts/<target>/ and the command to reproduce it in the output. Each target's last
# libFuzzer line (executions, coverage) is printed at the end. Targets are built optimized with
# debug assertions and overflow checks on (-O -a). FUZZ_TARGET_DIR moves the build directory
# (CI keeps one outside the clone so that later runs reuse it).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
targets="${FUZZ_TARGETS:-decode connection payload emulator}"
jobs_log="$(mktemp -d)"
trap 'rm -rf "$jobs_log"' EXIT

flags=(-O -a)
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then flags+=(--target-dir "$FUZZ_TARGET_DIR"); fi

cargo +nightly fuzz build "${flags[@]}"
for t in $targets; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${secs}s"
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$jobs_log/$t.log" 2>&1; then
    tail -n 60 "$jobs_log/$t.log"
    echo "== fuzz $t: CRASH (input in fuzz/artifacts/$t/)"
    exit 1
  fi
  runs="$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$jobs_log/$t.log" | tail -1 || true)"
  cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$jobs_log/$t.log" | tail -1 || true)"
  echo "== fuzz $t: ok, ${runs:-no summary}, ${cov:-no coverage line}"
done
