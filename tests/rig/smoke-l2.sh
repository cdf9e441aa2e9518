#!/usr/bin/env bash
# Quick sanity check of the L2 guest without nesting: boot $RIG_CACHE/vmlinux
# (PVH) and l2-initrd.cpio.gz directly under host QEMU TCG (q35, 2 vCPUs) and
# look for the userspace marker. Takes ~10 s. (microvm under TCG hangs with
# `quiet`: the guest spins waiting for jiffies; q35 does not.)
#
# Usage: smoke-l2.sh [L2-CASE]    (runs /l2-cases/L2-CASE.sh, default "default")
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

main() {
    local log="$RIG_CACHE/last-smoke-l2.log" rc=0
    [ -f "$RIG_CACHE/vmlinux" ] || die "run tests/rig/prepare.sh first"
    timeout --kill-after=5 120 qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -M q35 -smp 2 -m 512M \
        -nodefaults -no-user-config -display none -monitor none -no-reboot \
        -serial "file:$log" -kernel "$RIG_CACHE/vmlinux" \
        -initrd "$RIG_CACHE/l2-initrd.cpio.gz" \
        -append "console=ttyS0 quiet reboot=t panic=-1 rig.l2=${1:-default}" \
        </dev/null >/dev/null 2>&1 || rc=$?
    grep -a 'RIG-' "$log" || true
    grep -aq 'RIG-L2: userspace nproc=2 cpuinfo=2' "$log" \
        || { log "FAIL: no userspace marker (qemu rc=$rc, log $log)"; exit 1; }
    log "PASS"
}

main "$@"
