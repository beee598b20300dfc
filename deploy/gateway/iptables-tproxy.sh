#!/bin/sh
# ftpgate as a transparent FTP gateway, with iptables TPROXY. The iptables
# equivalent of nftables-tproxy.nft (read that file's header for why each part
# is needed). Unlike the .nft file this script also installs the policy routing.
#
# Usage (as root, on the gateway):
#   LAN_IF=lan0 WAN_IF=wan0 FTPGATE_PORT=2121 sh iptables-tproxy.sh
# Optional:
#   IPV6=1        also divert IPv6 FTP (ip6tables, ip -6 rule/route)
#   MARK=0x1      firewall mark used for the policy route
#   TABLE=100     routing table delivering marked packets locally
#   UNDO=1        remove what this script added
#
# Matching ftpgate (the listener needs IP_TRANSPARENT, i.e. CAP_NET_ADMIN):
#   ftpgate run --mode transparent --tproxy --listen 0.0.0.0:2121 \
#               --public-address <WAN address> --data-ports 50000-50999
#
# Needs the kernel's TPROXY support (xt_TPROXY, xt_socket, nf_tproxy_ipv4/ipv6;
# `modprobe xt_TPROXY xt_socket` where they are modules).
set -eu

LAN_IF=${LAN_IF:-lan0}
WAN_IF=${WAN_IF:-wan0}
FTPGATE_PORT=${FTPGATE_PORT:-2121}
IPV6=${IPV6:-0}
MARK=${MARK:-0x1}
TABLE=${TABLE:-100}
UNDO=${UNDO:-0}

# $1: iptables or ip6tables; $2: 4 or 6.
setup() {
	ipt=$1
	fam=$2
	$ipt -t mangle -D PREROUTING -j FTPGATE_TPROXY 2>/dev/null || true
	$ipt -t nat -D POSTROUTING -j FTPGATE_POST 2>/dev/null || true
	for tc in mangle:FTPGATE_TPROXY mangle:FTPGATE_DIVERT nat:FTPGATE_POST; do
		$ipt -t "${tc%%:*}" -F "${tc#*:}" 2>/dev/null || true
		$ipt -t "${tc%%:*}" -X "${tc#*:}" 2>/dev/null || true
	done
	while ip -"$fam" rule del fwmark "$MARK/$MARK" lookup "$TABLE" 2>/dev/null; do :; done
	ip -"$fam" route flush table "$TABLE" 2>/dev/null || true
	if [ "$UNDO" = 1 ]; then
		return 0
	fi

	# Policy routing: marked packets are for this host, whatever their destination.
	if [ "$fam" = 4 ]; then
		ip -4 route add local 0.0.0.0/0 dev lo table "$TABLE"
	else
		ip -6 route add local ::/0 dev lo table "$TABLE"
	fi
	ip -"$fam" rule add fwmark "$MARK/$MARK" lookup "$TABLE"

	$ipt -t mangle -N FTPGATE_DIVERT
	$ipt -t mangle -A FTPGATE_DIVERT -j MARK --set-xmark "$MARK/$MARK"
	$ipt -t mangle -A FTPGATE_DIVERT -j ACCEPT

	$ipt -t mangle -N FTPGATE_TPROXY
	# Packets of connections ftpgate already accepted (a transparent socket exists).
	$ipt -t mangle -A FTPGATE_TPROXY -p tcp -m socket --transparent -j FTPGATE_DIVERT
	# New FTP control connections from the LAN: to ftpgate, destination kept.
	$ipt -t mangle -A FTPGATE_TPROXY -i "$LAN_IF" -p tcp --dport 21 \
		-j TPROXY --on-port "$FTPGATE_PORT" --tproxy-mark "$MARK/$MARK"
	$ipt -t mangle -A PREROUTING -j FTPGATE_TPROXY

	# Source NAT for the passive data connections that go straight through.
	$ipt -t nat -N FTPGATE_POST
	$ipt -t nat -A FTPGATE_POST -o "$WAN_IF" -j MASQUERADE
	$ipt -t nat -A POSTROUTING -j FTPGATE_POST
}

if [ "$UNDO" != 1 ]; then
	sysctl -q -w net.ipv4.ip_forward=1
	if [ "$IPV6" = 1 ]; then
		sysctl -q -w net.ipv6.conf.all.forwarding=1
	fi
fi
# rp_filter: strict mode (1) is fine when replies to the LAN route back out of
# $LAN_IF; on asymmetric multi-homed gateways set it to 2 (loose) there:
#   sysctl -w net.ipv4.conf.$LAN_IF.rp_filter=2
# route_localnet is not needed.
setup iptables 4
if [ "$IPV6" = 1 ]; then
	setup ip6tables 6
fi
