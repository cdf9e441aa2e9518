#!/bin/sh
# L2 case (rig.l2=powerbutton): what acpid or systemd-logind does with the ACPI power button.
# Loads the button driver and evdev, finds the "Power Button" input device, prints
# `RIG-L2: powerbutton waiting dev=eventN`, blocks for one input event (up to 120 s), checks it
# is KEY_POWER (type EV_KEY=1, code 116) and prints `RIG-L2: powerbutton pressed type=1 code=116`;
# /init then powers the guest off.
while read -r m; do
    insmod "$m" 2>/dev/null
done </etc/rig-modules-button
dev=
for i in 1 2 3 4 5 6 7 8 9 10; do
    for e in /sys/class/input/event*; do
        [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] && dev=${e##*/}
    done
    [ -n "$dev" ] && [ -c "/dev/input/$dev" ] && break
    dev=
    sleep 0.2
done
if [ -z "$dev" ]; then
    echo "RIG-L2: powerbutton no-device inputs=[$(cat /sys/class/input/*/device/name 2>/dev/null | tr '\n' ',')]"
    exit 1
fi
echo "RIG-L2: powerbutton waiting dev=$dev"
# One struct input_event (24 bytes on x86_64): time (16), type (2), code (2), value (4).
timeout 120 dd if="/dev/input/$dev" of=/tmp/ev bs=24 count=1 2>/dev/null
set -- $(od -An -tu2 -j16 -N4 /tmp/ev 2>/dev/null)
echo "RIG-L2: powerbutton pressed type=${1:-none} code=${2:-none}"
[ "${1:-}" = 1 ] && [ "${2:-}" = 116 ]
