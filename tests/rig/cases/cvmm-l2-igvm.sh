#!/bin/sh
# L1 case: cvmm boots the stock L2 kernel and the busybox initrd wrapped in one
# native IGVM file (examples/mkigvm: the vmlinux's PT_LOAD segments and the initrd
# as PAGE_DATA, a PVH start info naming the initrd as its module, the command
# line and the memory map as IGVM parameters cvmm fills) with `cvmm run --igvm`
# on plain KVM, 2 vCPUs, no --kernel/--initrd; checks the userspace marker (which
# only the initrd's init prints) and reports the time. Needs run-l1.sh
# --add <cvmm>:/bin/cvmm --add <FILE.igvm from mkigvm>:/l2/vmlinux.igvm.
# RIG_IGVM_PLAIN=1: after each IGVM boot, the same kernel and initrd with
# --kernel /l2/vmlinux --initrd (case cvmm-l2-igvm-plain), for the comparison.
# RIG_IGVM_RUNS=N (default 1): N rounds; names get -rK from the second round.
. /lib/rig/case-lib.sh

# Not `name`: run_l2 and check_l2_boot set that global.
case_name=cvmm-l2-igvm
command -v cvmm >/dev/null || { fail $case_name "no cvmm in L1 (use --add PATH:/bin/cvmm)"; exit 1; }
[ -f /l2/vmlinux.igvm ] \
    || { fail $case_name "no /l2/vmlinux.igvm (use --add FILE.igvm:/l2/vmlinux.igvm)"; exit 1; }

rc=0
k=1
while [ "$k" -le "${RIG_IGVM_RUNS:-1}" ]; do
    sfx=""
    [ "$k" -gt 1 ] && sfx="-r$k"
    RIG_L2_IMAGE=vmlinux.igvm
    run_l2 "$case_name$sfx" "${RIG_L2_TIMEOUT:-240}" cvmm run \
        --igvm "$(l2_image)" --append "$L2_APPEND" \
        --smp 2 --memory 512M --serial stdio
    check_l2_boot "$case_name$sfx" 2 || rc=1
    if [ "${RIG_IGVM_PLAIN:-0}" = 1 ]; then
        RIG_L2_IMAGE=vmlinux
        run_l2 "$case_name-plain$sfx" "${RIG_L2_TIMEOUT:-240}" cvmm run \
            --kernel "$(l2_image)" --initrd /l2/initrd.cpio.gz --append "$L2_APPEND" \
            --smp 2 --memory 512M --serial stdio
        check_l2_boot "$case_name-plain$sfx" 2 || rc=1
    fi
    k=$((k + 1))
done
exit $rc
