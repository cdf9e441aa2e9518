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
#      (seconds for the L1 session, default 1500), RIG_TIER_C_STALL (seconds
#      without L1's heartbeat that mean L1 froze, default 120; the cases from the
#      frozen or crashed one on run again in a fresh session), RIG_TIER_C_RETRIES
#      (at most this many fresh sessions, default 2), RIG_BIN_DIR (skip the build
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
    # A session whose L1 froze (run-l1.sh exit 125: no heartbeat, e.g. a soft lockup of
    # L1's vCPUs under the outer TCG) or whose L1 kernel crashed (exit 126) is a rig
    # failure, not a verdict on the case it was running: that case and the ones after it
    # run again in a fresh session, whose results are the ones counted. At most
    # RIG_TIER_C_RETRIES (default 2) fresh sessions; one more rig failure fails tier C.
    # Cases that fail in a finished session run once more in a fresh session (the rig's
    # nested TCG has also stalled single L2 guests); their first failures are printed as
    # RIG-FLAKY lines, and a case that fails again fails tier C.
    local cases="" session=1 counted rerun_done=0 bad
    counted="$RIG_CACHE/tier-c-results.txt"
    : >"$counted"
    while :; do
        log="$RIG_CACHE/tier-c-l1.log"
        [ "$session" = 1 ] || log="$RIG_CACHE/tier-c-l1.session$session.log"
        rc=0
        run_session "$bin" "$log" "$cases" "$@" || rc=$?
        if { [ "$rc" = 125 ] || [ "$rc" = 126 ]; } && [ "$session" -le "${RIG_TIER_C_RETRIES:-2}" ]; then
            local all stuck what rest=""
            # tier-c.sh prints its case list first; without it (L1 froze before), run them all.
            all=$(tr -d '\r' <"$log" | sed -n 's/^RIG-CASES //p' | head -n 1)
            stuck=$(tr -d '\r' <"$log" | sed -n 's/^RIG-CASE //p' | tail -n 1)
            if [ -n "$stuck" ]; then
                rest=$(echo "$all" | tr ' ' '\n' | sed -n "/^${stuck}\$/,\$p" | tr '\n' ' ')
                rest=${rest% }
            fi
            # Keep what finished before the frozen case (nothing when all cases run again);
            # cases that failed there run again too, once.
            if [ -n "$rest" ]; then
                tr -d '\r' <"$log" | sed "/^RIG-CASE ${stuck}\$/,\$d" >"$counted.part"
                bad=$(failed_cases "$counted.part")
                if [ -n "$bad" ] && [ "$rerun_done" = 0 ]; then
                    sed -n 's/^RIG-FAIL /RIG-FLAKY /p' "$counted.part"
                    without_cases "$bad" <"$counted.part" >>"$counted"
                    rest="$bad $rest" rerun_done=1
                else
                    cat "$counted.part" >>"$counted"
                fi
                rm -f "$counted.part"
            fi
            what="froze"
            [ "$rc" = 126 ] && what="crashed"
            echo "RIG-RETRY tier-c-l1: L1 $what during case ${stuck:-(none yet)} (session $session);" \
                "a fresh session runs: ${rest:-all cases}"
            cases=$rest session=$((session + 1))
            continue
        fi
        bad=$(failed_cases "$log")
        if [ -n "$bad" ] && [ "$rerun_done" = 0 ] && tr -d '\r' <"$log" | grep -aq '^RIG-L1-DONE '; then
            tr -d '\r' <"$log" | without_cases "$bad" >>"$counted"
            tr -d '\r' <"$log" | sed -n 's/^RIG-FAIL /RIG-FLAKY /p'
            echo "RIG-RETRY tier-c-l1: case(s) $bad failed (session $session); a fresh session runs them once more"
            cases=$bad session=$((session + 1)) rerun_done=1
            continue
        fi
        tr -d '\r' <"$log" >>"$counted"
        break
    done
    passed=$(grep -ac '^RIG-PASS ' "$counted" || true)
    failed=$(grep -ac '^RIG-FAIL ' "$counted" || true)
    if ! grep -aq '^RIG-L1-DONE ' "$counted"; then
        echo "RIG-FAIL tier-c-l1: the L1 session did not finish (run-l1.sh rc=$rc, log $log)"
        failed=$((failed + 1))
    fi
    echo "tier-c: $passed passed, $failed failed"
    [ "$failed" = 0 ] && [ "$passed" -gt 0 ] || exit 1
}

# failed_cases LOG: the cases (from their RIG-CASE lines) with a RIG-FAIL line, in order.
failed_cases() {
    tr -d '\r' <"$1" | awk '/^RIG-CASE / { c = $2 } /^RIG-FAIL / && c != "" && !seen[c]++ { printf "%s%s", sep, c; sep = " " }'
}

# without_cases "CASE..." <LOG: the log without the lines of those cases (each from its
# RIG-CASE line to the next).
without_cases() {
    awk -v drop="$1" 'BEGIN { n = split(drop, d, " "); for (i = 1; i <= n; i++) skip[d[i]] = 1 }
        /^RIG-CASE / { c = $2 } !(c in skip)'
}

# run_session BIN LOG CASES [run-l1.sh options]: one L1 session running CASES of
# cases/tier-c.sh (empty: all of them).
run_session() {
    local bin="$1" log="$2" cases="$3"
    shift 3
    [ -z "$cases" ] || set -- --env "RIG_TIER_C_CASES=$cases" "$@"
    "$RIG_DIR/run-l1.sh" --case "$RIG_DIR/cases/tier-c.sh" --with-qemu \
        --add "$bin/cvmm:/bin/cvmm" \
        --add "$bin/examples/manager_client:/bin/manager_client" \
        --add /usr/share/ovmf/OVMF.fd:/l2/OVMF.fd \
        --add /usr/share/OVMF/OVMF_CODE_4M.fd:/l2/OVMF_CODE_4M.fd \
        --add /usr/share/OVMF/OVMF_VARS_4M.fd:/l2/OVMF_VARS_4M.fd \
        --add "$RIG_CACHE/vmlinux.igvm:/l2/vmlinux.igvm" \
        --timeout "${RIG_TIER_C_TIMEOUT:-1500}" --stall "${RIG_TIER_C_STALL:-120}" \
        --log "$log" "$@"
}

main "$@"
