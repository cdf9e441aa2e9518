#!/bin/sh
# L1 case: cvmm boots the stock L2 kernel with 2 vCPUs and the busybox initrd;
# checks the userspace marker, reports the time. Needs
# run-l1.sh --add <cvmm static binary>:/bin/cvmm.
# Image: RIG_L2_IMAGE=vmlinux (PVH, default) | bzImage, or the first argument.
. /lib/rig/case-lib.sh
[ -n "${1:-}" ] && RIG_L2_IMAGE="$1"

name=cvmm-l2-boot
command -v cvmm >/dev/null || { fail $name "no cvmm in L1 (use --add PATH:/bin/cvmm)"; exit 1; }

run_l2 $name "${RIG_L2_TIMEOUT:-240}" cvmm run \
    --kernel "$(l2_image)" --initrd /l2/initrd.cpio.gz --append "$L2_APPEND" \
    --smp 2 --memory 512M --serial stdio
check_l2_boot $name 2
