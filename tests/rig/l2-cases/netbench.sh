#!/bin/sh
# L2 case rig.l2=netbench: the guest half of the network benchmark
# (cases/net-bench.sh). DHCP; sink one connection on 7002 and report its byte
# count; send rig.bytes zero bytes to 10.0.2.2:<rig.port>; then answer
# rig.echoes short connections on 7002. Prints `RIG-L2: netbench ...` lines.

arg() { # arg NAME: value of NAME=... on the kernel command line
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1"=*) echo "${w#*=}" ;; esac
    done
}
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -n -q -t 5 -T 2 -s /etc/udhcpc/default.script >/tmp/udhcpc.log 2>&1 \
    || { echo "RIG-L2: netbench dhcp failed"; exit 1; }
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat $d/device)" = 0x0001 ] && echo "RIG-L2: netbench nic features=$(cat $d/features)"
done
bytes=$(arg rig.bytes)
port=$(arg rig.port)
(nc -l -p 7002 | wc -c >/tmp/sink.count) &
sleep 1
echo "RIG-L2: netbench ready"
wait
echo "RIG-L2: netbench sink bytes=$(cat /tmp/sink.count)"
# busybox nc may not close on stdin EOF: the host closes after `bytes`.
dd if=/dev/zero bs=65536 count=$((bytes / 65536)) 2>/dev/null | nc 10.0.2.2 "$port" >/dev/null
echo "RIG-L2: netbench source done"
i=0
while [ $i -lt "$(arg rig.echoes)" ]; do
    echo "netbench $i" | nc -l -p 7002 >/dev/null
    i=$((i + 1))
done
echo "RIG-L2: netbench done"
