#!/bin/sh
# L2 case (rig.l2=irq): how the guest's interrupts are wired. The serial port's line in
# /proc/interrupts (its count summed over CPUs, the controller and the pin) and the clock
# event device. (Direct boot's ACPI is hardware-reduced, so Linux uses no 8259 either way.)
line=$(grep -m1 'ttyS0' /proc/interrupts)
count=$(echo "$line" | awk '{ s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s }')
chip=$(echo "$line" | grep -o -e 'IO-APIC' -e 'XT-PIC' -e 'PCI-MSI' | head -n 1)
pin=$(echo "$line" | grep -o -e '[0-9]*-edge' -e '[0-9]*-fasteoi' | head -n 1)
ce=$(cat /sys/devices/system/clockevents/clockevent0/current_device 2>/dev/null)
echo "RIG-L2: irq ttyS0=${count:-0} chip=${chip:-none} pin=${pin:-none} clockevent=${ce:-none}"
