#!/bin/sh
# L1 case: `cvmm manager` with the Cocos manager variables, driven over gRPC by
# /bin/manager_client (examples/manager_client.rs). Creates a VM whose L2 guest
# runs l2-cases/cocos.sh with rig.serve=loop, reads the forwarded port until
# the guest answers with its /etc/cocos/environment, checks that it carries
# AGENT_CVM_ID=<the id>, removes the VM and checks that the forwarded port is
# closed and the VM process is gone. Needs run-l1.sh
# --add <cvmm>:/bin/cvmm --add <manager_client>:/bin/manager_client.
# With the argument `uefi`: MANAGER_VMM_PLAIN_BOOT=uefi, so the VM boots the bzImage through
# OVMF_CODE_4M (flash) with a per-VM copy of OVMF_VARS_4M (needs both under /l2/); the copy
# must exist in the VM's state directory while it runs and go with it. Checks are mgr-uefi-*.
. /lib/rig/case-lib.sh

mode=${1:-direct}
name=mgr
[ "$mode" = uefi ] && name=mgr-uefi
ADDR=http://127.0.0.1:7001
for b in cvmm manager_client; do
    command -v $b >/dev/null || { fail $name "no $b in L1 (use --add PATH:/bin/$b)"; exit 1; }
done
rc=0
check() { # check NAME STATUS REASON: report one check (STATUS 0 = pass)
    if [ "$2" = 0 ]; then pass "$1"; else fail "$1" "$3"; rc=1; fi
}
# listening PORT: a TCP socket listens on PORT (any address).
listening() {
    hex=$(printf ':%04X' "$1")
    awk -v p="$hex" '$2 ~ p"$" && $4 == "0A" { f = 1 } END { exit !f }' \
        /proc/net/tcp 2>/dev/null
}
# vm_pids ID: pids of the `cvmm vm --spec` processes whose spec path names ID.
vm_pids() {
    for d in /proc/[0-9]*; do
        tr '\0' ' ' <$d/cmdline 2>/dev/null | grep -q -- "vm --spec .*$1" && echo ${d#/proc/}
    done
}
# wait_until SECS CMD...: poll CMD every second for at most SECS seconds.
wait_until() {
    n=$1
    shift
    while [ $n -gt 0 ]; do
        "$@" && return 0
        sleep 1
        n=$((n - 1))
    done
    "$@"
}
not() { ! "$@"; }
gone() { [ -z "$(vm_pids "$1")" ]; }

ip link set lo up 2>/dev/null
mkdir -p /run/cvmm
work=/tmp/mgr-work
mkdir -p $work/certs
for f in cert key ca; do
    printf -- '-----BEGIN RIG %s-----\nmanager %s\n-----END RIG %s-----\n' $f $f $f \
        >$work/certs/$f.pem
done

kernel=/l2/vmlinux
if [ "$mode" = uefi ]; then
    # OVMF loads a bzImage (fw_cfg), not a PVH vmlinux.
    kernel=/l2/bzImage
    export MANAGER_VMM_PLAIN_BOOT=uefi MANAGER_QEMU_OVMF_CODE_FILE=/l2/OVMF_CODE_4M.fd \
        MANAGER_QEMU_OVMF_VARS_FILE=/l2/OVMF_VARS_4M.fd
fi
MANAGER_GRPC_HOST=127.0.0.1 MANAGER_GRPC_PORT=7001 MANAGER_HTTP_PORT=7003 \
MANAGER_STATE_DIR=/run/cvmm MANAGER_VMM_TEE=none \
MANAGER_QEMU_DISK_IMG_KERNEL_FILE=$kernel \
MANAGER_QEMU_DISK_IMG_ROOTFS_FILE=/l2/initrd.cpio.gz \
MANAGER_QEMU_KERNEL_CMDLINE="console=ttyS0 quiet reboot=t panic=-1 rig.l2=cocos rig.serve=loop" \
MANAGER_QEMU_SMP_COUNT=1 MANAGER_QEMU_MEMORY_SIZE=512M \
MANAGER_QEMU_HOST_FWD_RANGE=6100-6150 MANAGER_VMM_HOST_FWD_ADDR=127.0.0.1 \
    cvmm manager </dev/null >/tmp/$name-manager.log 2>&1 &
mgr_pid=$!

t0=$(now_ms)
wait_until 180 listening 7001
check $name-listen $? "the manager does not listen on 7001 after 180 s"
t_listen=$(now_ms)

manager_client create --addr $ADDR --ttl 10m --certs $work/certs >/tmp/$name-create.out 2>&1
create_rc=$?
t_created=$(now_ms)
id=$(sed -n 's/^cvm_id=//p' /tmp/$name-create.out)
port=$(sed -n 's/^forwarded_port=//p' /tmp/$name-create.out)
check $name-create "$([ $create_rc = 0 ] && [ -n "$id" ] && [ -n "$port" ]; echo $?)" \
    "rc=$create_rc: $(head -c 200 /tmp/$name-create.out | tr '\n' ' ')"
case "$port" in
    61[0-4][0-9]|6150) check $name-port-range 0 "" ;;
    *) check $name-port-range 1 "forwarded_port '$port' outside 6100-6150" ;;
esac
pids=$(vm_pids "${id:-none}")
check $name-vm-process "$([ -n "$id" ] && [ -n "$pids" ]; echo $?)" "no 'cvmm vm --spec' process for id '$id'"

if [ "$mode" = uefi ]; then
    check $name-vars-copy "$([ -s "/run/cvmm/$id/OVMF_VARS.fd" ]; echo $?)" \
        "no OVMF_VARS.fd in /run/cvmm/$id while the VM runs"
fi

# Read the forward until the guest answers (the port is open from the start).
got=/tmp/$name.got
: >$got
t_data=""
if [ -n "$port" ]; then
    deadline=$(( $(now_ms) + ${RIG_L2_TIMEOUT:-240} * 1000 ))
    while [ "$(now_ms)" -lt $deadline ] && [ -n "$(vm_pids "$id")" ]; do
        timeout 10 nc 127.0.0.1 "$port" </dev/null >$got 2>/dev/null
        [ -s $got ] && { t_data=$(now_ms); break; }
        sleep 1
    done
fi
check $name-env-id "$(grep -qx "AGENT_CVM_ID=$id" $got; echo $?)" \
    "read $(wc -c <$got) bytes from 127.0.0.1:$port: $(head -c 80 $got | tr '\n' ' ')"
check $name-env-certs "$(grep -qx 'AGENT_CVM_GRPC_CLIENT_CERT=/etc/certs/cert.pem' $got; echo $?)" \
    "no AGENT_CVM_GRPC_CLIENT_CERT line in the environment"

# The guest's own checks, from the VM's console log (removed with the VM).
cp "/run/cvmm/$id/console.log" /tmp/$name-console.log 2>/dev/null
tr -d '\r' </tmp/$name-console.log 2>/dev/null \
    | grep -ao 'RIG-\(PASS\|FAIL\) cocos-.*' | sed "s/ cocos-/ $name-l2-/"
tr -d '\r' </tmp/$name-console.log 2>/dev/null \
    | grep -ao 'RIG-L2: cocos [a-z].*' | sed "s/^RIG-L2: cocos /RIG-INFO $name-l2 /"
if [ "$mode" = uefi ]; then
    check $name-booted-efi "$(tr -d '\r' </tmp/$name-console.log 2>/dev/null \
        | grep -aq 'RIG-L2: cocos boot efi=1'; echo $?)" "the guest did not come through EFI"
fi

t_rm0=$(now_ms)
manager_client remove --addr $ADDR --id "$id" >/tmp/$name-remove.out 2>&1
remove_rc=$?
t_removed=$(now_ms)
check $name-remove "$remove_rc" "rc=$remove_rc: $(head -c 200 /tmp/$name-remove.out | tr '\n' ' ')"
wait_until 40 gone "$id"
check $name-vm-gone $? "VM process(es) $(vm_pids "$id") still running 40 s after RemoveVm"
t_gone=$(now_ms)
timeout 5 nc 127.0.0.1 "$port" </dev/null >/dev/null 2>&1
nc_rc=$?
check $name-port-closed "$([ $nc_rc != 0 ] && [ $nc_rc != 124 ] && not listening "$port"; echo $?)" \
    "127.0.0.1:$port still accepts connections (nc rc=$nc_rc)"
check $name-state-removed "$([ ! -e "/run/cvmm/$id" ]; echo $?)" "/run/cvmm/$id still exists"

kill $mgr_pid 2>/dev/null
wait_until 15 not alive $mgr_pid
check $name-stop $? "the manager did not exit 15 s after SIGTERM"
kill -9 $mgr_pid 2>/dev/null

result "$name ms_listen=$((t_listen - t0)) ms_create=$((t_created - t_listen)) ms_to_data=$(( ${t_data:-$t_created} - t_created )) ms_remove_rpc=$((t_removed - t_rm0)) ms_to_gone=$((t_gone - t_rm0))"
if [ $rc != 0 ]; then
    echo "--- last lines of the manager log"
    tail -n 15 /tmp/$name-manager.log | cut -c1-200
    echo "--- last lines of the VM console"
    tr -d '\r' </tmp/$name-console.log 2>/dev/null | tail -n 15 | cut -c1-200
    echo "---"
fi
exit $rc
