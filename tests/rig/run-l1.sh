#!/usr/bin/env bash
# Run one case in the nested rig: build an L1 initramfs (busybox, kvm_amd and
# its dependencies, the L2 kernel and initrd under /l2/, extra files, the case
# as /case.sh, all cases of cases/ under /lib/rig/cases/), boot it under QEMU TCG with emulated AMD SVM, and report the
# `RIG-` lines of its serial log. Exit 0 only when `RIG-L1-DONE rc=0` appears.
#
# Usage: run-l1.sh --case FILE [--add SRC:DEST]... [--env KEY=VAL]...
#                  [--with-qemu] [--timeout SECS] [--stall SECS] [--log FILE] [--keep]
# --stall SECS: L1 prints a heartbeat every 20 s; none for SECS seconds means
# L1 froze (e.g. a soft lockup of its vCPUs under TCG): the outer QEMU's
# threads are reported, it is killed, and run-l1.sh exits 125. An L1 that ends
# without finishing and with a kernel crash in its log (BUG, Oops, panic) exits
# 126. A timeout or a failed case exits 1.
# Env: RIG_CACHE, RIG_L1_MEM (default 2G), RIG_L1_KERNEL (vmlinux|bzImage),
#      RIG_L1_APPEND (more L1 kernel parameters, e.g. loglevel=5 for stack traces).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

CASE=""
ADDS=()
ENVS=()
WITH_QEMU=0
TIMEOUT=600
STALL=0
LOG=""
KEEP=0
QEMU_PID=""
WORK=""
# Kernel messages of an L1 crash (Oops, BUG, panic).
L1_CRASH='(BUG: |Oops: |general protection fault|Kernel panic)'

usage() { sed -n '/^# Usage/,/^# Env/s/^# \{0,1\}//p' "$0" >&2; exit 2; }

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --case) CASE="$2"; shift 2 ;;
            --add) ADDS+=("$2"); shift 2 ;;
            --env) ENVS+=("$2"); shift 2 ;;
            --with-qemu) WITH_QEMU=1; shift ;;
            --timeout) TIMEOUT="$2"; shift 2 ;;
            --stall) STALL="$2"; shift 2 ;;
            --log) LOG="$2"; shift 2 ;;
            --keep) KEEP=1; shift ;;
            -h|--help) usage ;;
            *) echo "unknown argument: $1" >&2; usage ;;
        esac
    done
    [ -n "$CASE" ] || usage
    [ -f "$CASE" ] || die "case file not found: $CASE"
    [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout wants seconds, got '$TIMEOUT'"
    [[ "$STALL" =~ ^[0-9]+$ ]] || die "--stall wants seconds, got '$STALL'"
}

# copy_file SRC ROOT DEST: copy SRC to ROOT/DEST, following symlinks.
copy_file() {
    mkdir -p "$2$(dirname "$3")"
    cp -L "$1" "$2$3"
}

add_l2_images() {
    local root="$1" f
    for f in vmlinux bzImage l2-initrd.cpio.gz; do
        [ -f "$RIG_CACHE/$f" ] || die "missing $RIG_CACHE/$f: run tests/rig/prepare.sh"
    done
    mkdir -p "$root/l2"
    cp "$RIG_CACHE/vmlinux" "$RIG_CACHE/bzImage" "$root/l2/"
    cp "$RIG_CACHE/l2-initrd.cpio.gz" "$root/l2/initrd.cpio.gz"
}

# add_qemu ROOT: the host's qemu-system-x86_64, every library it links, and
# the firmware/option ROMs direct kernel boot needs (microvm: qboot; pc/q35:
# SeaBIOS, linuxboot, pvh).
add_qemu() {
    local root="$1" bin lib f
    bin=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not installed"
    copy_file "$bin" "$root" /usr/bin/qemu-system-x86_64
    for lib in $(ldd "$bin" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }'); do
        copy_file "$lib" "$root" "$lib"
    done
    for f in qboot.rom bios-microvm.bin linuxboot.bin linuxboot_dma.bin pvh.bin \
        multiboot.bin multiboot_dma.bin kvmvapic.bin; do
        [ -e "/usr/share/qemu/$f" ] && copy_file "/usr/share/qemu/$f" "$root" "/usr/share/qemu/$f"
    done
    for f in /usr/share/seabios/*.bin; do
        [ -e "$f" ] && copy_file "$f" "$root" "$f"
    done
    "$root/usr/bin/qemu-system-x86_64" --version >/dev/null \
        || die "copied qemu does not run"
}

add_extras() {
    local root="$1" spec src dest
    for spec in "${ADDS[@]}"; do
        src="${spec%%:*}"
        dest="${spec#*:}"
        [ "$src" != "$spec" ] && [ -n "$dest" ] || die "--add wants SRC:DEST, got '$spec'"
        [ -e "$src" ] || die "--add source not found: $src"
        copy_file "$src" "$root" "$dest"
    done
}

write_env() {
    local root="$1" kv
    : >"$root/etc/rig-env"
    for kv in "${ENVS[@]}"; do
        [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VAL, got '$kv'"
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}" >>"$root/etc/rig-env"
    done
}

build_l1_initrd() {
    local kver="$1" root="$2" out="$3"
    rm -rf "$root"
    add_busybox "$root"
    add_modules "$root" "$kver" kvm_amd
    grep -q kvm-amd "$root/etc/rig-modules" || die "kvm-amd module not found for $kver"
    install -m 0755 "$RIG_DIR/l1-init.sh" "$root/init"
    install -D -m 0644 "$RIG_DIR/l1-lib.sh" "$root/lib/rig/case-lib.sh"
    install -m 0755 "$CASE" "$root/case.sh"
    mkdir -p "$root/lib/rig/cases"
    cp "$RIG_DIR"/cases/*.sh "$root/lib/rig/cases/"
    add_l2_images "$root"
    [ "$WITH_QEMU" = 1 ] && add_qemu "$root"
    add_extras "$root"
    write_env "$root"
    # Uncompressed: decompressing ~100 MB under TCG would cost seconds.
    make_cpio "$root" "$out" none
    log "L1 initramfs: $(( $(stat -c %s "$out") / 1048576 )) MiB"
}

kill_qemu() {
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        sleep 2
        kill -9 "$QEMU_PID" 2>/dev/null || true
    fi
    QEMU_PID=""
}

# report_threads PID: each thread of the outer QEMU with its state, the CPU
# time it used over 2 s and where it sleeps, to tell a deadlock from a spin.
report_threads() {
    local pid="$1" t before=() i=0 ticks
    for t in /proc/"$pid"/task/*; do
        before+=("$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null || echo 0)")
    done
    sleep 2
    for t in /proc/"$pid"/task/*; do
        ticks=$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null || echo 0)
        log "  thread ${t##*/} $(cat "$t/comm" 2>/dev/null):" \
            "state $(awk '{ print $3 }' "$t/stat" 2>/dev/null)," \
            "cpu $(( ticks - ${before[$i]:-0} )) ticks in 2 s, wchan $(cat "$t/wchan" 2>/dev/null)"
        i=$((i + 1))
    done
}

# run_outer_qemu INITRD LOG: boot L1; returns 124 on timeout, 125 on a stall.
run_outer_qemu() {
    local initrd="$1" log="$2" kernel="$RIG_CACHE/${RIG_L1_KERNEL:-vmlinux}" rc=0
    : >"$log"
    "${RIG_OUTER_QEMU:-qemu-system-x86_64}" \
        -accel "${RIG_L1_ACCEL:-tcg,thread=multi}" -cpu "${RIG_L1_CPU:-EPYC,+svm,+npt}" -M q35 \
        -smp 2 -m "${RIG_L1_MEM:-2G}" \
        -nodefaults -no-user-config -display none -monitor none -no-reboot \
        -serial "file:$log" \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 quiet reboot=t panic=-1 ${RIG_L1_APPEND:-}" \
        </dev/null >"$log.qemu" 2>&1 &
    QEMU_PID=$!
    local deadline=$(( SECONDS + TIMEOUT )) beats=0 beat=$SECONDS now
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timeout after ${TIMEOUT} s: killing L1"
            kill_qemu
            return 124
        fi
        # Heartbeats, not log growth: a locked-up L1 kernel still prints soft-lockup reports.
        now=$(grep -ac '^RIG-L1-ALIVE' "$log" 2>/dev/null || true)
        if [ "$now" != "$beats" ]; then
            beats=$now beat=$SECONDS
        elif [ "$STALL" -gt 0 ] && [ $(( SECONDS - beat )) -ge "$STALL" ]; then
            log "stall: no heartbeat from L1 for $STALL s (it beats every 20 s): L1 froze"
            report_threads "$QEMU_PID"
            log "last lines of the serial log that are not RIG- lines:"
            tr -d '\r' <"$log" | grep -av '^RIG-' | tail -n 20 >&2 || true
            kill_qemu
            return 125
        fi
        sleep 1
    done
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=""
    return "$rc"
}

main() {
    parse_args "$@"
    local kver initrd start rc=0
    kver=$(rig_kver)
    WORK=$(mktemp -d "$RIG_CACHE/l1-run.XXXXXX")
    trap 'kill_qemu; [ "$KEEP" = 1 ] || rm -rf "$WORK"' EXIT
    trap 'exit 130' INT TERM
    LOG="${LOG:-$RIG_CACHE/last-l1.log}"
    initrd="$WORK/l1.cpio"
    build_l1_initrd "$kver" "$WORK/root" "$initrd"
    rm -rf "$WORK/root"
    log "booting L1 (case $(basename "$CASE"), timeout ${TIMEOUT} s, serial log $LOG)"
    start=$SECONDS
    run_outer_qemu "$initrd" "$LOG" || rc=$?
    log "L1 ended after $(( SECONDS - start )) s (qemu rc=$rc)"
    grep -a 'RIG-' "$LOG" | grep -av '^RIG-L1-ALIVE' || true
    if grep -aq '^RIG-L1-DONE rc=0' "$LOG"; then
        return 0
    fi
    [ "$rc" = 125 ] && { log "FAIL: L1 froze (stall)"; exit 125; }
    # L1 ended by itself without finishing: its kernel crashed (panic=-1 reboots, -no-reboot ends QEMU).
    if [ "$rc" = 0 ] && tr -d '\r' <"$LOG" | grep -aqE "$L1_CRASH"; then
        log "FAIL: L1's kernel crashed: $(tr -d '\r' <"$LOG" | grep -aE -m 1 "$L1_CRASH")"
        exit 126
    fi
    [ "$rc" = 0 ] || grep -v 'TCG doesn.t support' "$LOG.qemu" | tail -n 5 >&2 || true
    log "FAIL: no 'RIG-L1-DONE rc=0' in $LOG"
    exit 1
}

main "$@"
