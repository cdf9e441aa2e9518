#!/bin/sh
# L1 case: cvmm runs the L2 guest the way the Cocos manager would: 2 vCPUs,
# the built-in NAT with a forward 127.0.0.1:7777 -> guest 7002, and the
# env_share/certs_share 9p shares. The L2 case `cocos` (l2-cases/cocos.sh)
# mounts the shares, runs DHCP, fetches a file from busybox httpd on L1's
# 127.0.0.1:8080 through 10.0.2.2, resolves a name from L1's /etc/hosts
# through 10.0.2.3, and serves the environment file once on
# port 7002; this case reads it back through the forward and compares bytes.
# Needs run-l1.sh --add <cvmm>:/bin/cvmm.
# With the argument `qemu-ovmf`, cvmm runs as `qemu-system-x86_64` (its QEMU personality)
# with the Go manager's plain-mode argument set (manager-api.md §5.2): OVMF_CODE_4M + a VARS
# copy as pflash, -netdev user with hostfwd, virtio-9p shares, -kernel/-initrd/-append
# (1 vCPU: firmware SMP start-up is slow in the rig). Checks are then named qemu-ovmf-*.
. /lib/rig/case-lib.sh

mode=${1:-run}
name=cocos
[ "$mode" = qemu-ovmf ] && name=qemu-ovmf
HTTP_PORT=8080
FWD_PORT=7777
[ "$mode" = qemu-ovmf ] && FWD_PORT=7778
command -v cvmm >/dev/null || { fail $name "no cvmm in L1 (use --add PATH:/bin/cvmm)"; exit 1; }
rc=0
check() { # check NAME CONDITION-RESULT REASON: report one check
    if [ "$2" = 0 ]; then pass "$1"; else fail "$1" "$3"; rc=1; fi
}

# The shares and the file served over HTTP.
work=/tmp/cocos-work
mkdir -p $work/env $work/certs $work/www
cat >$work/env/environment <<EOF
AGENT_LOG_LEVEL=info
AGENT_CVM_GRPC_URL=10.0.2.2:7001
AGENT_CVM_ID=rig-cocos-$(now_ms)
AGENT_CERTS_TOKEN=
AGENT_CVM_CA_URL=
AGENT_CVM_GRPC_CLIENT_CERT=/etc/certs/cert.pem
AGENT_CVM_GRPC_CLIENT_KEY=/etc/certs/key.pem
AGENT_CVM_GRPC_SERVER_CA_CERTS=/etc/certs/ca.pem
EOF
for f in cert key ca; do
    printf -- '-----BEGIN RIG %s-----\nnot a real %s\n-----END RIG %s-----\n' $f $f $f \
        >$work/certs/$f.pem
done
dd if=/dev/urandom of=$work/www/rig.bin bs=1024 count=96 2>/dev/null
env_sum=$(md5sum <$work/env/environment)
env_sum=${env_sum%% *}
http_sum=$(md5sum <$work/www/rig.bin)
http_sum=${http_sum%% *}

ip link set lo up 2>/dev/null
httpd -f -p 127.0.0.1:$HTTP_PORT -h $work/www &
httpd_pid=$!

# A name only L1's /etc/hosts knows: the NAT's DNS at 10.0.2.3 must answer it.
DNS_IP=192.0.2.77
echo "$DNS_IP cocos.test" >>/etc/hosts
append="$L2_APPEND rig.l2=cocos rig.http=$HTTP_PORT rig.httpsum=$http_sum rig.dns=cocos.test rig.dnsip=$DNS_IP"
log=/tmp/$name.log
t0=$(now_ms)
if [ "$mode" = qemu-ovmf ]; then
    mkdir -p /tmp/qemu-personality
    ln -sf "$(command -v cvmm)" /tmp/qemu-personality/qemu-system-x86_64
    cp /l2/OVMF_VARS_4M.fd /tmp/OVMF_VARS-rig.fd
    u=rig-0001
    /tmp/qemu-personality/qemu-system-x86_64 -enable-kvm -machine q35 -cpu EPYC \
        -smp 1,maxcpus=64 -m 512M,slots=5,maxmem=30G \
        -drive if=pflash,format=raw,unit=0,file=/l2/OVMF_CODE_4M.fd,readonly=on \
        -drive if=pflash,format=raw,unit=1,file=/tmp/OVMF_VARS-rig.fd \
        -netdev user,id=vmnic-$u,hostfwd=tcp::$FWD_PORT-:7002 \
        -device virtio-net-pci,disable-legacy=on,iommu_platform=true,netdev=vmnic-$u,addr=0x2,romfile= \
        -kernel /l2/bzImage -append "$append" -initrd /l2/initrd.cpio.gz \
        -nographic -monitor pty \
        -fsdev local,id=cert_fs,path=$work/certs,security_model=mapped \
        -device virtio-9p-pci,fsdev=cert_fs,mount_tag=certs_share \
        -fsdev local,id=env_fs,path=$work/env,security_model=mapped \
        -device virtio-9p-pci,fsdev=env_fs,mount_tag=env_share \
        </dev/null >$log 2>&1 &
else
    cvmm run --kernel "$(l2_image)" --initrd /l2/initrd.cpio.gz --append "$append" \
        --smp 2 --memory 512M --serial stdio \
        --forward tcp:127.0.0.1:$FWD_PORT-:7002 \
        --share env_share=$work/env --share certs_share=$work/certs \
        </dev/null >$log 2>&1 &
fi
vmm_pid=$!

# Wait (bounded) for the guest to announce it serves, then read the forward.
deadline=$(( $(now_ms) + ${RIG_L2_TIMEOUT:-240} * 1000 ))
while alive $vmm_pid && ! grep -aq 'RIG-L2: cocos serving' $log \
    && [ "$(now_ms)" -lt $deadline ]; do
    sleep 1
done
t_announce=$(now_ms)
got=/tmp/$name.got
: >$got
while alive $vmm_pid && [ "$(now_ms)" -lt $deadline ]; do
    timeout 10 nc 127.0.0.1 $FWD_PORT </dev/null >$got 2>/dev/null
    [ -s $got ] && break
    sleep 1
done
t_served=$(now_ms)

# The guest powers off after serving once.
while alive $vmm_pid && [ "$(now_ms)" -lt $deadline ]; do
    sleep 1
done
if alive $vmm_pid; then
    kill $vmm_pid
    sleep 1
fi
wait $vmm_pid
vmm_rc=$?
t_end=$(now_ms)
kill $httpd_pid 2>/dev/null

[ "${RIG_VERBOSE:-0}" = 1 ] && tr -d '\r' <$log | cut -c1-200
# The guest's own checks, then the host's.
tr -d '\r' <$log | grep -ao 'RIG-\(PASS\|FAIL\) cocos-.*'
tr -d '\r' <$log | grep -ao 'RIG-L2: cocos [a-z].*' | sed 's/^RIG-L2: /RIG-INFO /'
l2_sum=$(tr -d '\r' <$log | sed -n 's/.*RIG-L2: cocos env md5=\([0-9a-f]*\).*/\1/p' | head -n 1)
check $name-env-md5 "$([ "$l2_sum" = "$env_sum" ]; echo $?)" \
    "guest read md5 '$l2_sum', host file has $env_sum"
got_sum=$(md5sum <$got)
got_sum=${got_sum%% *}
check $name-forward "$([ "$got_sum" = "$env_sum" ]; echo $?)" \
    "read $(wc -c <$got) bytes from 127.0.0.1:$FWD_PORT, md5 $got_sum, want $env_sum ($(head -c 60 $got | tr '\n' ' '))"
check $name-l2-done "$(grep -aq 'RIG-L2: case cocos rc=0' $log; echo $?)" \
    "the L2 case did not finish with rc=0"
check $name-exit "$([ "$vmm_rc" = 0 ]; echo $?)" "cvmm exited with $vmm_rc (0 = guest powered off)"
result "$name ms_to_serving=$((t_announce - t0)) ms_to_data=$((t_served - t0)) ms_total=$((t_end - t0)) vmm_rc=$vmm_rc"
if [ $rc != 0 ]; then
    echo "--- last lines of $log"
    tr -d '\r' <$log | grep -av '^RIG-' | tail -n 20 | cut -c1-200
    echo "---"
fi
exit $rc
