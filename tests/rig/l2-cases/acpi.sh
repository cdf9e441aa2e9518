#!/bin/sh
# L2 case (rig.l2=acpi): which ACPI tables and firmware interface the guest got, for the
# firmware checks: the table signatures under /sys/firmware/acpi/tables, whether the
# kernel came through EFI (efi=1 after OVMF), the clock source it chose, the power buttons ACPI
# enumerated (LNXPWRBN: fixed feature; PNP0C0C: control method; ACPI0013: the generic event
# device behind it) and the driver the GED bound to (evged, built in: its probe walks the
# device's _CRS and requests the interrupt).
tables=$(ls /sys/firmware/acpi/tables 2>/dev/null | grep -v -e '^data$' -e '^dynamic$' | sort | tr '\n' ' ')
efi=0
[ -d /sys/firmware/efi ] && efi=1
cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)
buttons=$(ls /sys/bus/acpi/devices 2>/dev/null | grep -oE '^(LNXPWRBN|PNP0C0C|ACPI0013)' | sort -u | tr '\n' ' ')
ged=$(ls -d /sys/bus/platform/drivers/*/ACPI0013:* 2>/dev/null | head -n 1 | cut -d/ -f6)
echo "RIG-L2: acpi tables=[${tables% }] efi=$efi clocksource=${cs:-?} buttons=[${buttons% }] ged_driver=${ged:-none}"
