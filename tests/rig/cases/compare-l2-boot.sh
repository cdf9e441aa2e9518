#!/bin/sh
# L1 case: boot the L2 guest with QEMU and with cvmm in the same L1, for each
# kernel image (RIG_COMPARE_IMAGES, default "vmlinux bzImage"), so their
# times compare. Needs --with-qemu and --add <cvmm>:/bin/cvmm.
rc=0
for img in ${RIG_COMPARE_IMAGES:-vmlinux bzImage}; do
    for vmm in qemu cvmm; do
        sh "/lib/rig/cases/$vmm-l2-boot.sh" "$img" || rc=1
    done
done
exit $rc
