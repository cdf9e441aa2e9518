#!/usr/bin/env bash
# Runs every test of cvmm: formatting and lints, unit and integration tests (tier A, and tier B
# on the host /dev/kvm), a 1-minute smoke run of each fuzz target, then tier C in the nested
# rig (stock Linux under cvmm inside an L1 guest that has its own KVM). Installs what it needs
# first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
# One-shot builds: incremental caches would only take disk space (about 1 GiB).
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
mkdir -p build
cargo test --workspace

echo "== fuzz smoke: every cargo-fuzz target for 60 s"
bash scripts/fuzz-smoke.sh 60

echo "== independent Python gRPC client"
bash tests/python/run.sh

echo "== tier C: stock Linux under cvmm in the nested rig"
tests/rig/run-tier-c.sh
