#!/bin/sh
# L1 case for tier C, one L1 session: the L2 boot comparison (QEMU and cvmm,
# both images), the Cocos guest case, the manager case, the firmware platform
# (direct-boot ACPI, OVMF as ROM and as CFI flash), the split irqchip (cvmm's
# IOAPIC next to KVM's) and the IGVM-wrapped stock kernel (--igvm). Needs
# --with-qemu, --add <cvmm>:/bin/cvmm, --add <manager_client>:/bin/manager_client,
# the OVMF images and /l2/vmlinux.igvm (run-tier-c.sh adds them).
rc=0
for c in compare-l2-boot cvmm-l2-cocos cvmm-manager cvmm-l2-firmware cvmm-l2-split cvmm-l2-igvm; do
    sh "/lib/rig/cases/$c.sh" || rc=1
done
# The Go manager's plain argument set through cvmm's QEMU personality, OVMF as pflash.
sh /lib/rig/cases/cvmm-l2-cocos.sh qemu-ovmf || rc=1
exit $rc
