#!/bin/sh
# L2 case (rig.l2=acpi): which ACPI tables and firmware interface the guest got, for the
# firmware checks: the table signatures under /sys/firmware/acpi/tables, whether the
# kernel came through EFI (efi=1 after OVMF), and the clock source it chose.
tables=$(ls /sys/firmware/acpi/tables 2>/dev/null | grep -v -e '^data$' -e '^dynamic$' | sort | tr '\n' ' ')
efi=0
[ -d /sys/firmware/efi ] && efi=1
cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)
echo "RIG-L2: acpi tables=[${tables% }] efi=$efi clocksource=${cs:-?}"
