#!/usr/bin/env bash
# Builds cvmm (static, release) and the probe guest, then boots the probe guest with 2 vCPUs
# under `cvmm run` and prints its boot timeline. Needs /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p cvmm
bin=target/x86_64-unknown-linux-gnu/release/cvmm
file "$bin"
mkdir -p build/probe
CARGO_TARGET_DIR=target/probe-guest tests/probe-guest/build.sh build/probe
"$bin" run --kernel build/probe/probe-pvh.elf --smp 2 --memory 128M \
  --append "probe.exit=poweroff" --timeline build/probe/timeline.json
echo "timeline written to build/probe/timeline.json"
