#!/bin/sh
# L1 case: QEMU (KVM, microvm, direct boot) boots the stock L2 kernel with 2
# vCPUs and the busybox initrd; checks the userspace marker, reports the time.
# Needs run-l1.sh --with-qemu. Image: RIG_L2_IMAGE=vmlinux (PVH) | bzImage.
# Machine options: RIG_QEMU_MACHINE (default microvm,rtc=on: the kernel finds
# its CMOS RTC as it will under cvmm, which emulates one).
. /lib/rig/case-lib.sh
[ -n "${1:-}" ] && RIG_L2_IMAGE="$1"

name=qemu-l2-boot
command -v qemu-system-x86_64 >/dev/null || { fail $name "no qemu in L1 (use --with-qemu)"; exit 1; }

run_l2 $name "${RIG_L2_TIMEOUT:-240}" qemu-system-x86_64 \
    -accel kvm -cpu host -M "${RIG_QEMU_MACHINE:-microvm,rtc=on}" \
    -smp 2 -m 512M -nodefaults -no-user-config -display none -no-reboot \
    -serial stdio -kernel "$(l2_image)" -initrd /l2/initrd.cpio.gz \
    -append "$L2_APPEND"
check_l2_boot $name 2
