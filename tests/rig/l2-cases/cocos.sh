#!/bin/sh
# L2 case rig.l2=cocos: do what the Cocos guest does with the VMM's devices.
# Mounts env_share at /etc/cocos and certs_share at /etc/certs with the Cocos
# fstab options, checks the certs share is read-only, runs DHCP (udhcpc with
# /etc/udhcpc/default.script), fetches http://10.0.2.2:<rig.http>/rig.bin and
# compares its md5 with rig.httpsum, resolves rig.dns through 10.0.2.3 (must
# give rig.dnsip, from L1's /etc/hosts), then serves /etc/cocos/environment on TCP 7002 with busybox nc:
# once (default), or until the VM is stopped with rig.serve=loop.
# Prints RIG-PASS/RIG-FAIL cocos-<check> lines and `RIG-L2: cocos ...` facts.

arg() { # arg NAME: value of NAME=... on the kernel command line
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1"=*) echo "${w#*=}" ;; esac
    done
}
up() { cut -d' ' -f1 /proc/uptime; }
rc=0
ok() { echo "RIG-PASS cocos-$1"; }
bad() { echo "RIG-FAIL cocos-$1: $2"; rc=1; }
t_start=$(up)

# 1. The shares, with exactly the options of the Cocos fstab.
opts=trans=virtio,version=9p2000.L,cache=mmap
for pair in env_share:/etc/cocos certs_share:/etc/certs; do
    tag=${pair%%:*} dir=${pair#*:}
    mkdir -p "$dir"
    if mount -t 9p -o "$opts" "$tag" "$dir" 2>/tmp/mount.err; then
        ok "mount-$tag"
    else
        bad "mount-$tag" "$(head -c 150 /tmp/mount.err | tr '\n' ' ')"
    fi
done
env=/etc/cocos/environment
if [ -f "$env" ] && md5=$(md5sum <"$env" 2>/tmp/read.err); then
    echo "RIG-L2: cocos env md5=${md5%% *} bytes=$(wc -c <"$env")"
    ok env-read
else
    bad env-read "cannot read $env: $(head -c 150 /tmp/read.err 2>/dev/null)"
fi
certs=$(ls -l /etc/certs 2>/dev/null | awk 'NF >= 9 { printf "%s:%s ", $9, $5 }')
echo "RIG-L2: cocos certs=[${certs% }]"
echo "RIG-L2: cocos boot efi=$([ -d /sys/firmware/efi ] && echo 1 || echo 0)"
missing=""
for f in cert.pem key.pem ca.pem; do
    [ -f "/etc/certs/$f" ] || missing="$missing $f"
done
[ -z "$missing" ] && ok certs-files || bad certs-files "missing:$missing"
if touch /etc/certs/x 2>/dev/null; then
    bad certs-readonly "touch /etc/certs/x succeeded"
else
    ok certs-readonly
fi
t_shares=$(up)

# 2. DHCP, as agent_setup.sh does on every link without IPv4.
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    udhcpc -i eth0 -n -q -t 5 -T 2 -s /etc/udhcpc/default.script >/tmp/udhcpc.log 2>&1
    addr=$(ip -4 addr show dev eth0 | awk '$1 == "inet" { print $2; exit }')
    gw=$(ip route | awk '$1 == "default" { print $3; exit }')
    ns=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf 2>/dev/null)
    echo "RIG-L2: cocos dhcp addr=$addr gw=$gw dns=$ns"
    [ "$addr" = 10.0.2.15/24 ] && ok dhcp-addr || bad dhcp-addr "got '$addr': $(tail -n 2 /tmp/udhcpc.log | tr '\n' ' ')"
    [ "$gw" = 10.0.2.2 ] && ok dhcp-route || bad dhcp-route "default via '$gw'"
    [ "$ns" = 10.0.2.3 ] && ok dhcp-dns || bad dhcp-dns "nameserver '$ns'"
else
    bad dhcp-addr "no eth0 ($(ls /sys/class/net | tr '\n' ' '))"
fi
t_dhcp=$(up)

# 3. Outbound TCP to the L1 host through the NAT (10.0.2.2 = L1's 127.0.0.1).
port=$(arg rig.http)
if [ -n "$port" ]; then
    if timeout 30 wget -q -O /tmp/rig.bin "http://10.0.2.2:$port/rig.bin" 2>/tmp/wget.err; then
        got=$(md5sum </tmp/rig.bin)
        got=${got%% *}
        if [ "$got" = "$(arg rig.httpsum)" ]; then
            ok http-get
        else
            bad http-get "md5 $got of $(wc -c </tmp/rig.bin) bytes, want $(arg rig.httpsum)"
        fi
    else
        bad http-get "wget rc=$?: $(head -c 150 /tmp/wget.err | tr '\n' ' ')"
    fi
fi
t_http=$(up)

# 4. DNS through 10.0.2.3: a name from the L1 host's /etc/hosts (rig.dnsip is
# the address L1 put there) must resolve to that address.
name=$(arg rig.dns)
if [ -n "$name" ]; then
    timeout 10 nslookup "$name" 10.0.2.3 >/tmp/dns.out 2>&1
    echo "RIG-L2: cocos dns $name rc=$? $(tail -n 2 /tmp/dns.out | tr '\n' ' ' | head -c 120)"
    want=$(arg rig.dnsip)
    if [ -n "$want" ]; then
        if grep -q "Address.*[^0-9.]$want\$" /tmp/dns.out || grep -q "Address: $want\$" /tmp/dns.out; then
            ok dns-hosts
        else
            bad dns-hosts "$name did not resolve to $want: $(tr '\n' ' ' </tmp/dns.out | head -c 150)"
        fi
    fi
fi
t_dns=$(up)

# 5. Serve the environment file on the agent's port.
[ -f "$env" ] || { echo "cocos-l2: no environment" >/tmp/env; env=/tmp/env; }
echo "RIG-L2: cocos serving 7002 t_shares=$t_shares t_dhcp=$t_dhcp t_http=$t_http t_dns=$t_dns start=$t_start"
if [ "$(arg rig.serve)" = loop ]; then
    while :; do
        nc -l -p 7002 <"$env" >/dev/null 2>&1
    done
fi
if nc -l -p 7002 <"$env" >/dev/null 2>/tmp/nc.err; then
    ok serve
else
    bad serve "nc rc=$?: $(head -c 150 /tmp/nc.err | tr '\n' ' ')"
fi
exit $rc
