#!/usr/bin/env bash
# Smoke-fuzzes every cargo-fuzz target of fuzz/ for SECONDS_PER_TARGET seconds (default 60),
# one after the other, and prints the executions each did. Fails if a target crashes (the
# crashing input lands in fuzz/artifacts/<target>/) or does not build.
#
# usage: scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]
#   FUZZ_SANITIZER=none  build without AddressSanitizer (default: address)
#   FUZZ_TARGETS="a b"   run only these targets
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz passes.
# Seeds come from fuzz/corpus/<target>/ (read-only); new inputs go to a working corpus under
# the git-ignored fuzz/target/corpus/<target>/, which later runs start from.
set -euo pipefail

secs="${1:-60}"
[[ "$secs" =~ ^[0-9]+$ && "$secs" -gt 0 ]] || { echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/fuzz"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$fuzz/target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"
flags=(--debug-assertions --sanitizer "$sanitizer")

# The fuzz crate is outside the workspace, so it names the rust-vmm crates whose types cross
# into devices/vmm itself; a version that differs from the workspace's would fail to build with
# confusing type errors. Say which line to change instead.
for dep in vm-memory virtio-queue vmm-sys-util; do
    ws=$(sed -n "s/^$dep = .*\"\([0-9.]*\)\".*/\1/p; s/^$dep = \"\([0-9.]*\)\"/\1/p" "$root/Cargo.toml" | head -1)
    fz=$(sed -n "s/^$dep = .*\"\([0-9.]*\)\".*/\1/p; s/^$dep = \"\([0-9.]*\)\"/\1/p" "$fuzz/Cargo.toml" | head -1)
    if [[ -n "$fz" && "$ws" != "$fz" ]]; then
        echo "fuzz/Cargo.toml has $dep $fz but the workspace uses $ws: update fuzz/Cargo.toml" >&2
        exit 1
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

cd "$fuzz"
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
nice -n 10 cargo fuzz build "${flags[@]}"

failed=()
for t in $targets; do
    work="$CARGO_TARGET_DIR/corpus/$t"
    log="$CARGO_TARGET_DIR/fuzz-$t.log"
    mkdir -p "$work" "corpus/$t"
    start=$(date +%s)
    rc=0
    nice -n 10 cargo fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    if [[ $rc -ne 0 ]]; then
        failed+=("$t")
        echo "FAIL $t: exit $rc after ${took}s, ${execs:-?} executions (log: $log)"
        grep -m1 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$log" || true
        ls -1 "artifacts/$t" 2>/dev/null | sed 's/^/    artifact: /' || true
    else
        echo "ok   $t: ${execs:-?} executions in ${took}s, ${cov:-cov: ?}"
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
