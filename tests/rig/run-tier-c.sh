#!/usr/bin/env bash
# Tier C, the one command CI runs: prepare the rig, build the outer QEMU
# (build-outer-qemu.sh), the release cvmm and the manager_client and mkigvm
# examples (static), wrap the L2 kernel and initrd into an IGVM file, boot one
# L1 session running cases/tier-c.sh (QEMU vs cvmm L2 boot, the Cocos guest, the
# manager, the firmware platform with Debian's OVMF, the split irqchip, the
# IGVM-wrapped kernel), print
# every RIG- line and finish with `tier-c: N passed, M failed`. Exit 0 only
# when M = 0 and N > 0.
#
# Usage: tests/rig/run-tier-c.sh [run-l1.sh options, e.g. --env RIG_VERBOSE=1]
# Env: CARGO (default cargo), CARGO_TARGET_DIR, RIG_CACHE, RIG_OUTER_QEMU (an outer
#      QEMU to use instead of building one), RIG_TIER_C_TIMEOUT
#      (seconds for the L1 session, default 1500), RIG_BIN_DIR (skip the build
#      and take cvmm and examples/manager_client from this directory).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

main() {
    local bin log rc=0 passed failed
    "$RIG_DIR/prepare.sh"
    # The outer QEMU with the rig's TCG fix (OVMF as an L2 guest crashes Debian's build).
    if [ -z "${RIG_OUTER_QEMU:-}" ]; then
        "$RIG_DIR/build-outer-qemu.sh"
        export RIG_OUTER_QEMU="$RIG_CACHE/outer-qemu/bin/qemu-system-x86_64"
    fi
    if [ -n "${RIG_BIN_DIR:-}" ]; then
        bin="$RIG_BIN_DIR"
        log "using prebuilt binaries in $bin"
    else
        log "building the release cvmm, examples/manager_client and examples/mkigvm"
        (cd "$REPO_DIR" && "${CARGO:-cargo}" build --release -q -p cvmm \
            --bin cvmm --example manager_client --example mkigvm)
        bin="${CARGO_TARGET_DIR:-$REPO_DIR/target}/x86_64-unknown-linux-gnu/release"
    fi
    [ -x "$bin/cvmm" ] && [ -x "$bin/examples/manager_client" ] && [ -x "$bin/examples/mkigvm" ] \
        || die "no cvmm, manager_client or mkigvm in $bin"
    # The stock L2 kernel and initrd as one native IGVM file (cases/cvmm-l2-igvm.sh).
    "$bin/examples/mkigvm" --elf "$RIG_CACHE/vmlinux" --initrd "$RIG_CACHE/l2-initrd.cpio.gz" \
        --out "$RIG_CACHE/vmlinux.igvm" >&2
    log="$RIG_CACHE/tier-c-l1.log"
    "$RIG_DIR/run-l1.sh" --case "$RIG_DIR/cases/tier-c.sh" --with-qemu \
        --add "$bin/cvmm:/bin/cvmm" \
        --add "$bin/examples/manager_client:/bin/manager_client" \
        --add /usr/share/ovmf/OVMF.fd:/l2/OVMF.fd \
        --add /usr/share/OVMF/OVMF_CODE_4M.fd:/l2/OVMF_CODE_4M.fd \
        --add /usr/share/OVMF/OVMF_VARS_4M.fd:/l2/OVMF_VARS_4M.fd \
        --add "$RIG_CACHE/vmlinux.igvm:/l2/vmlinux.igvm" \
        --timeout "${RIG_TIER_C_TIMEOUT:-1500}" --log "$log" "$@" || rc=$?
    passed=$(tr -d '\r' <"$log" | grep -ac '^RIG-PASS ' || true)
    failed=$(tr -d '\r' <"$log" | grep -ac '^RIG-FAIL ' || true)
    if ! tr -d '\r' <"$log" | grep -aq '^RIG-L1-DONE '; then
        echo "RIG-FAIL tier-c-l1: the L1 session did not finish (run-l1.sh rc=$rc, log $log)"
        failed=$((failed + 1))
    fi
    echo "tier-c: $passed passed, $failed failed"
    [ "$failed" = 0 ] && [ "$passed" -gt 0 ] || exit 1
}

main "$@"
