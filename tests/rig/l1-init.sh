#!/bin/sh
# /init of the L1 rig VM (busybox): load kvm_amd and its dependencies, check
# /dev/kvm, run /case.sh, print `RIG-L1-DONE rc=<rc>` and power off.
# Variables from run-l1.sh --env are in /etc/rig-env.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o size=1g tmpfs /tmp

say() { echo "RIG-L1: $*" >/dev/console; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

done_rc() {
    echo "RIG-L1-DONE rc=$1" >/dev/console
    sync
    poweroff -f
    sleep 10
}

while read -r m; do
    insmod "$m" 2>/tmp/insmod.err || say "insmod $m failed: $(head -c 200 /tmp/insmod.err)"
done </etc/rig-modules

if [ ! -c /dev/kvm ]; then
    say "no /dev/kvm after $(uptime_s) s"
    done_rc 97
fi
say "kvm ready uptime=$(uptime_s) nested=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null) npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"

[ -f /etc/rig-env ] && . /etc/rig-env
# A heartbeat so the host (run-l1.sh --stall) tells a frozen L1 from a slow case.
( while :; do sleep 20; echo "RIG-L1-ALIVE uptime=$(uptime_s)" >/dev/console; done ) &
cd /tmp
sh /case.sh </dev/null >/dev/console 2>&1
done_rc $?
