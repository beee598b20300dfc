#!/bin/sh
# ftpgate as a transparent FTP gateway, with iptables REDIRECT (NAT).
# The iptables equivalent of nftables-redirect.nft; read that file's header too.
#
# Usage (as root, on the gateway):
#   LAN_IF=lan0 WAN_IF=wan0 FTPGATE_PORT=2121 sh iptables-redirect.sh
# Optional:
#   IPV6=1                 also redirect IPv6 FTP (ip6tables) and masquerade IPv6
#   MAP_PASSIVE=1          for `ftpgate --map-passive`: also redirect the data-port
#   DATA_PORTS=50000:50999   range (EPSV data connections go to the server's address)
#   UNDO=1                 remove what this script added
#
# Matching ftpgate:
#   ftpgate run --mode transparent --listen 0.0.0.0:2121 [--listen [::]:2121] \
#               --public-address <WAN address> --data-ports 50000-50999
#
# Everything lives in chains named FTPGATE_*, so re-running the script replaces
# the rules instead of stacking duplicates.
set -eu

LAN_IF=${LAN_IF:-lan0}
WAN_IF=${WAN_IF:-wan0}
FTPGATE_PORT=${FTPGATE_PORT:-2121}
DATA_PORTS=${DATA_PORTS:-50000:50999}
IPV6=${IPV6:-0}
MAP_PASSIVE=${MAP_PASSIVE:-0}
UNDO=${UNDO:-0}

# $1: iptables or ip6tables.
setup() {
	ipt=$1
	# Detach and delete our chains (ignore "does not exist").
	$ipt -t nat -D PREROUTING -j FTPGATE_PRE 2>/dev/null || true
	$ipt -t nat -D POSTROUTING -j FTPGATE_POST 2>/dev/null || true
	for c in FTPGATE_PRE FTPGATE_POST; do
		$ipt -t nat -F $c 2>/dev/null || true
		$ipt -t nat -X $c 2>/dev/null || true
	done
	if [ "$UNDO" = 1 ]; then
		return 0
	fi

	$ipt -t nat -N FTPGATE_PRE
	$ipt -t nat -N FTPGATE_POST
	$ipt -t nat -A PREROUTING -j FTPGATE_PRE
	$ipt -t nat -A POSTROUTING -j FTPGATE_POST

	# FTP control connections from the LAN go to ftpgate, which finds their original
	# destination with SO_ORIGINAL_DST. ftpgate's own outgoing connections pass the
	# OUTPUT chain, not PREROUTING, so they are never redirected back to it.
	$ipt -t nat -A FTPGATE_PRE -i "$LAN_IF" -p tcp --dport 21 \
		-j REDIRECT --to-ports "$FTPGATE_PORT"
	if [ "$MAP_PASSIVE" = 1 ]; then
		# --map-passive: 229 (EPSV) replies carry only a port, and clients connect
		# to the server's address (RFC 2428); catch those connections too. This
		# diverts every LAN connection to these ports, whatever its destination:
		# pick a --data-ports range nothing else on the internet is used for.
		$ipt -t nat -A FTPGATE_PRE -i "$LAN_IF" -p tcp --dport "$DATA_PORTS" -j REDIRECT
	fi
	# Plain source NAT for everything else, including passive data connections,
	# which ftpgate leaves alone by default.
	$ipt -t nat -A FTPGATE_POST -o "$WAN_IF" -j MASQUERADE
}

if [ "$UNDO" != 1 ]; then
	sysctl -q -w net.ipv4.ip_forward=1
	if [ "$IPV6" = 1 ]; then
		sysctl -q -w net.ipv6.conf.all.forwarding=1
	fi
fi
# route_localnet is not needed (REDIRECT delivers to the LAN interface's address,
# not to 127.0.0.1); rp_filter is not affected (no policy routing).
setup iptables
if [ "$IPV6" = 1 ]; then
	setup ip6tables
fi

# If the INPUT policy is DROP, also accept the control port from the LAN and the
# data ports from the internet (servers connect back to them in active mode):
#   iptables -A INPUT -i "$LAN_IF" -p tcp --dport "$FTPGATE_PORT" -j ACCEPT
#   iptables -A INPUT -i "$WAN_IF" -p tcp --dport "$DATA_PORTS" -j ACCEPT
# Do not assign the kernel's FTP conntrack helper (-j CT --helper ftp) to port 21:
# ftpgate terminates those connections itself.
