#!/bin/sh
# /init of the L2 test guest (busybox). Loads the packaged virtio/9p/vsock
# modules that exist, prints the userspace marker, runs the optional case
# /l2-cases/<name>.sh named by `rig.l2=<name>` on the kernel command line,
# then powers off (`rig.exit=reboot` reboots instead, for VMMs without ACPI
# power-off; combine with `reboot=t`). Keep output short: serial is slow.
export PATH=/bin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp

if [ -f /etc/rig-modules ]; then
    while read -r m; do
        insmod "$m" 2>/dev/null
    done </etc/rig-modules
fi

arg() { # arg NAME: value of NAME=... on the kernel command line
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1"=*) echo "${w#*=}" ;; esac
    done
}

cpus=$(nproc 2>/dev/null)
cpuinfo=$(grep -c '^processor' /proc/cpuinfo)
echo "RIG-L2: userspace nproc=$cpus cpuinfo=$cpuinfo" >/dev/console
echo "RIG-L2: uptime=$(cut -d' ' -f1 /proc/uptime)" >/dev/console

case_name=$(arg rig.l2)
if [ -n "$case_name" ]; then
    if [ -f "/l2-cases/$case_name.sh" ]; then
        sh "/l2-cases/$case_name.sh" >/dev/console 2>&1
        echo "RIG-L2: case $case_name rc=$?" >/dev/console
    else
        echo "RIG-L2: case $case_name missing" >/dev/console
    fi
fi

sync
if [ "$(arg rig.exit)" = reboot ]; then
    reboot -f
fi
poweroff -f
