#!/usr/bin/env bash
# The end-to-end comparison (measurement, not a test; never run by CI):
#   scripts/bench-e2e.sh [bench-e2e run options]
# e.g. scripts/bench-e2e.sh --rounds 5 --count 200000 --sdk-count 50000
#
# Builds bench-e2e in release mode, makes sure the Python SDK venv exists (.venv-sdk, as
# .ci/run creates it), then runs `bench-e2e run`: it starts mosquitto on 127.0.0.1 and a
# counting subscriber, runs interleaved rounds of our tokio adapter, rumqttc 0.25.1, the
# official Python SDK and the emulator ingest, and prints the tables (stdout; progress on
# stderr). Every run is bounded in count and time. Pass --no-sdk to skip the Python SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ " $* " != *" --no-sdk "* ]] && [ -z "${TB_SDK_PYTHON:-}" ]; then
  if [ ! -x .venv-sdk/bin/python ]; then
    python3 -m venv .venv-sdk
  fi
  .venv-sdk/bin/pip install --quiet --disable-pip-version-check \
    -r crates/gateway-emulator/tests/python_sdk/requirements.txt
  export TB_SDK_PYTHON="$PWD/.venv-sdk/bin/python"
fi

cargo build --release --locked -q -p gateway-benches --bin bench-e2e
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/bench-e2e" run "$@"
