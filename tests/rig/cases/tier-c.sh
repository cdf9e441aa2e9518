#!/bin/sh
# L1 case for tier C, one L1 session: the L2 boot comparison (QEMU and cvmm,
# both images), the Cocos guest case, the manager case, the firmware platform
# (direct-boot ACPI, OVMF as ROM and as CFI flash), the split irqchip (cvmm's
# IOAPIC next to KVM's), the IGVM-wrapped stock kernel (--igvm) and the Go
# manager's plain argument set through cvmm's QEMU personality with OVMF as
# pflash (cvmm-l2-cocos:qemu-ovmf) and the manager booting its VM through OVMF
# (cvmm-manager:uefi). Needs --with-qemu, --add <cvmm>:/bin/cvmm,
# --add <manager_client>:/bin/manager_client, the OVMF images and
# /l2/vmlinux.igvm (run-tier-c.sh adds them).
# RIG_TIER_C_CASES: the cases to run (CASE or CASE:ARG), default all below in order. The list
# is printed first (`RIG-CASES ...`), then `RIG-CASE <case>` before each case, so the host
# knows where a session stopped (run-tier-c.sh).
rc=0
cases=${RIG_TIER_C_CASES:-compare-l2-boot cvmm-l2-cocos cvmm-manager cvmm-l2-firmware \
    cvmm-l2-split cvmm-l2-igvm cvmm-l2-cocos:qemu-ovmf cvmm-manager:uefi}
echo "RIG-CASES" $cases
for c in $cases; do
    echo "RIG-CASE $c"
    case "$c" in
        *:*) sh "/lib/rig/cases/${c%%:*}.sh" "${c#*:}" || rc=1 ;;
        *) sh "/lib/rig/cases/$c.sh" || rc=1 ;;
    esac
done
exit $rc
