#!/bin/sh
# L1 case: what firmware costs, in one L1, runs alternating: QEMU q35 + Debian's OVMF.fd,
# cvmm + the same OVMF.fd (--firmware), and cvmm booting the same bzImage directly; each run
# to the guest's power-off, 1 vCPU, 512 MiB, the same initrd and command line. Prints each
# run and the medians: RIG-RESULT fw-bench <vmm> median_ms=... runs=...
# RIG_FW_BENCH_RUNS (default 3). Needs --with-qemu, --add <cvmm>:/bin/cvmm, /l2/OVMF.fd.
. /lib/rig/case-lib.sh
RIG_L2_IMAGE=bzImage
runs=${RIG_FW_BENCH_RUNS:-3}
APPEND="$L2_APPEND"
rc=0

one() { # one NAME CMD...: a run that must reach userspace; appends its ms to /tmp/NAME.ms
    name=$1
    shift
    run_l2 "$name" 600 "$@"
    if expect_marker "$name" "RIG-L2: userspace nproc=1"; then
        echo "$L2_MS" >>"/tmp/$name.ms"
        result "fw-bench-run $name ms=$L2_MS"
    else
        fail "$name" "no userspace marker (rc=$L2_RC)"
        rc=1
    fi
}

median() { sort -n "/tmp/$1.ms" 2>/dev/null | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "none" }'; }

for i in $(seq "$runs"); do
    one fwb-qemu-ovmf qemu-system-x86_64 -accel kvm -cpu host -M q35 -smp 1 -m 512M \
        -nodefaults -no-user-config -nographic -serial stdio -bios /l2/OVMF.fd \
        -kernel /l2/bzImage -initrd /l2/initrd.cpio.gz -append "$APPEND"
    one fwb-cvmm-ovmf cvmm run --firmware /l2/OVMF.fd --kernel /l2/bzImage \
        --initrd /l2/initrd.cpio.gz --append "$APPEND" --smp 1 --memory 512M --net none
    one fwb-cvmm-direct cvmm run --kernel /l2/bzImage --initrd /l2/initrd.cpio.gz \
        --append "$APPEND" --smp 1 --memory 512M --net none
done
for n in fwb-qemu-ovmf fwb-cvmm-ovmf fwb-cvmm-direct; do
    result "fw-bench $n median_ms=$(median $n) runs=$(tr '\n' ' ' </tmp/$n.ms 2>/dev/null)"
done
[ "$rc" = 0 ] && pass fw-bench
exit $rc
