#!/bin/sh
# L1 case: stock Linux under cvmm with the split irqchip (local APICs in KVM; cvmm's IOAPIC
# routes every pin as an MSI; no 8259s, no PIT) and, in the same L1, with KVM's in-kernel
# irqchip. Both must reach userspace with 2 vCPUs and an interrupt-driven serial console (L2
# case irq: ttyS0 interrupts counted on IO-APIC pin 4). With split, KVM has no IOAPIC, so those
# interrupts can only have come through the routes of cvmm's IOAPIC, which the guest must have
# programmed (timeline metric ioapic_route_updates). RIG-RESULT lines carry both boot times.
# Needs run-l1.sh --add <cvmm>:/bin/cvmm.
# Image: RIG_L2_IMAGE=vmlinux (PVH, default) | bzImage, or the first argument.
. /lib/rig/case-lib.sh
[ -n "${1:-}" ] && RIG_L2_IMAGE="$1"
command -v cvmm >/dev/null || { fail cvmm-l2-split "no cvmm in L1 (use --add PATH:/bin/cvmm)"; exit 1; }

rc=0
for chip in kernel split; do
    name=cvmm-l2-irqchip-$chip
    run_l2 $name "${RIG_L2_TIMEOUT:-240}" cvmm run \
        --kernel "$(l2_image)" --initrd /l2/initrd.cpio.gz --append "$L2_APPEND rig.l2=irq" \
        --smp 2 --memory 512M --serial stdio --irqchip $chip --timeline "/tmp/$name.json"
    check_l2_boot $name 2 || { rc=1; continue; }
    irq=$(sed -n 's/.*RIG-L2: irq \(.*\)/\1/p' "/tmp/$name.log" | head -n 1 | tr -d '\r')
    updates=$(sed -n 's/.*"ioapic_route_updates": *\([0-9]*\).*/\1/p' "/tmp/$name.json" 2>/dev/null)
    result "$name irqchip=$chip ${irq:-no-irq-line} ioapic_route_updates=${updates:-none}"
    count=$(echo "$irq" | sed -n 's/.*ttyS0=\([0-9]*\).*/\1/p')
    if [ "${count:-0}" -eq 0 ]; then
        fail $name "no serial interrupts counted (${irq:-no irq line})"
        rc=1
        continue
    fi
    case "$irq" in
        *chip=IO-APIC*pin=4-edge*) ;;
        *) fail $name "serial not on IOAPIC pin 4: $irq"; rc=1; continue ;;
    esac
    if [ $chip = split ] && [ "${updates:-0}" -lt 1 ]; then
        fail $name "the guest never programmed cvmm's IOAPIC (no route updates)"
        rc=1
        continue
    fi
    pass "$name-irq"
done
exit $rc
