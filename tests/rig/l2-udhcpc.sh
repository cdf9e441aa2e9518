#!/bin/sh
# udhcpc event script of the L2 guest (/etc/udhcpc/default.script): apply the
# lease like a distribution's DHCP client does (address and prefix, default
# route, /etc/resolv.conf). udhcpc passes the lease in $ip, $mask (prefix
# length), $router, $dns and $domain.
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        ip route del default 2>/dev/null
        for r in $router; do
            ip route add default via "$r" dev "$interface"
            break
        done
        : >/etc/resolv.conf
        [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
        for d in $dns; do
            echo "nameserver $d" >>/etc/resolv.conf
        done
        ;;
esac
exit 0
