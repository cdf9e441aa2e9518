#!/bin/sh
# L1 case (a benchmark, not part of tier C): the guest network of cvmm (its own
# NAT, --forward) against QEMU's `-netdev user,hostfwd` (slirp) with the same
# virtio-net-pci device, stock L2 Linux, alternately, RIG_NETBENCH_ROUNDS times
# (default 1); QEMU runs microvm with PCIe (q35's SeaBIOS crashed this L1).
# The L2 case `netbench` sinks RIG_NETBENCH_MIB (default 8) MiB from L1
# through the forward, sends as much to 10.0.2.2, then answers short
# connections; net_bench_client times each side. Needs --with-qemu,
# --add <cvmm>:/bin/cvmm and --add <net_bench_client>:/bin/net_bench_client.
. /lib/rig/case-lib.sh

FWD=7777
LISTEN=8090
bytes=$(( ${RIG_NETBENCH_MIB:-8} * 1048576 ))
append="$L2_APPEND rig.l2=netbench rig.bytes=$bytes rig.port=$LISTEN rig.echoes=5"
ip link set lo up 2>/dev/null
rc=0

one() { # one VMM: start it, wait for the guest's sink, run the client
    vmm=$1 log=/tmp/netbench-$1.log
    shift
    "$@" </dev/null >$log 2>&1 &
    pid=$!
    deadline=$(( $(now_ms) + 240000 ))
    while alive $pid && ! grep -aq 'RIG-L2: netbench ready' $log && [ "$(now_ms)" -lt $deadline ]; do
        sleep 1
    done
    if grep -aq 'RIG-L2: netbench ready' $log; then
        net_bench_client --name $vmm --fwd $FWD --listen $LISTEN --bytes $bytes --echoes 5 || rc=1
    else
        fail netbench-$vmm "guest never said netbench ready"
        tail -n 10 $log | cut -c1-200
        rc=1
    fi
    while alive $pid && ! grep -aq 'RIG-L2: case netbench' $log && [ "$(now_ms)" -lt $deadline ]; do
        sleep 1
    done
    tr -d '\r' <$log | grep -ao 'RIG-L2: netbench \(sink\|nic\).*'
    tr -d '\r' <$log | grep -ao 'virtio-net stopped.*' | sed 's/^/RIG-INFO /'
    kill $pid 2>/dev/null
    wait $pid
}

r=0
while [ $r -lt "${RIG_NETBENCH_ROUNDS:-1}" ]; do
    one cvmm env CVMM_LOG=info cvmm run --kernel "$(l2_image)" --initrd /l2/initrd.cpio.gz --append "$append" \
        --smp 2 --memory 512M --serial stdio --forward tcp:127.0.0.1:$FWD-:7002
    one qemu qemu-system-x86_64 -accel kvm -cpu host -M microvm,pcie=on,rtc=on -smp 2 -m 512M \
        -nodefaults -no-user-config -display none -serial stdio \
        -kernel "$(l2_image)" -initrd /l2/initrd.cpio.gz -append "$append" \
        -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$FWD-:7002 \
        -device virtio-net-pci,netdev=n0,disable-legacy=on,romfile=
    r=$((r + 1))
done
exit $rc
