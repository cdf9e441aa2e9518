#!/bin/sh
# Helpers for L1 case scripts (busybox sh), installed as /lib/rig/case-lib.sh.
# A case sources it, runs an L2 guest with run_l2, and reports with
# result/pass/fail. Only `RIG-` lines should reach the (slow) console.

# now_ms: milliseconds since L1 boot (10 ms resolution; busybox date lacks %N).
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# l2_image: the L2 kernel to boot, /l2/vmlinux (PVH, default) or /l2/bzImage
# when RIG_L2_IMAGE=bzImage (from run-l1.sh --env or the case's first argument).
l2_image() { echo "/l2/${RIG_L2_IMAGE:-vmlinux}"; }

# L2 kernel command line: quiet (serial costs ~0.5 ms/char nested), and
# reboot=t so a guest reboot ends in a triple fault, not the reset vector.
L2_APPEND="${RIG_L2_APPEND:-console=ttyS0 quiet reboot=t panic=-1}"

# run_l2 NAME TIMEOUT CMD...: run CMD (an L2 VMM whose guest serial goes to
# CMD's stdout) with a timeout; output in /tmp/NAME.log, wall time in L2_MS.
run_l2() {
    name="$1" secs="$2"
    shift 2
    t0=$(now_ms)
    timeout "$secs" "$@" </dev/null >"/tmp/$name.log" 2>&1
    L2_RC=$?
    L2_MS=$(( $(now_ms) - t0 ))
}

# expect_marker NAME PATTERN: succeed when /tmp/NAME.log has PATTERN.
expect_marker() { grep -q "$2" "/tmp/$1.log"; }

result() { echo "RIG-RESULT $*"; }
pass() { echo "RIG-PASS $*"; }

# fail NAME REASON: report a failure with the tail of the L2 log.
fail() {
    echo "RIG-FAIL $1: $2"
    if [ -f "/tmp/$1.log" ]; then
        echo "--- last lines of /tmp/$1.log"
        tail -n 15 "/tmp/$1.log" | cut -c1-200
        echo "---"
    fi
}

# check_l2_boot NAME VCPUS: judge a finished run_l2 (marker, exit) and report.
# RIG_VERBOSE=1 copies the whole L2 log to the console first.
check_l2_boot() {
    name="$1" cpus="$2"
    [ "${RIG_VERBOSE:-0}" = 1 ] && cut -c1-200 "/tmp/$name.log"
    if expect_marker "$name" "RIG-L2: userspace nproc=$cpus cpuinfo=$cpus"; then
        up=$(sed -n 's/.*RIG-L2: uptime=\([0-9.]*\).*/\1/p' "/tmp/$name.log" | head -n 1)
        result "$name ms=$L2_MS image=$(basename "$(l2_image)") guest_uptime=${up:-?} rc=$L2_RC"
        if [ "$L2_RC" = 124 ]; then
            fail "$name" "guest reached userspace but the VMM did not exit within the timeout"
            return 1
        fi
        pass "$name"
        return 0
    fi
    result "$name ms=$L2_MS image=$(basename "$(l2_image)") rc=$L2_RC"
    fail "$name" "no 'nproc=$cpus cpuinfo=$cpus' marker (VMM rc=$L2_RC)"
    return 1
}

# alive PID: the process exists and is not a zombie (an exited background job
# stays a zombie until `wait`, and `kill -0` still succeeds on it).
alive() {
    [ -r "/proc/$1/stat" ] && ! sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | grep -q '^Z'
}
