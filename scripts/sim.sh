#!/usr/bin/env bash
# Runs the deterministic simulation over N seeds (default 10000) in release mode.
#   scripts/sim.sh 100000          seeds 0..100000
#   SIM_SEED_START=5000 scripts/sim.sh 1000
#   SIM_SEED=1234 scripts/sim.sh   replay one seed with its trace
set -euo pipefail
cd "$(dirname "$0")/.."
SIM_SEEDS="${1:-${SIM_SEEDS:-10000}}" cargo test --release -p gateway-sim --test sim -- --nocapture
