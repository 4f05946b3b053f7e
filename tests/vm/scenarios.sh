#!/bin/sh
# The VLAN VM's scenarios (tier 4), run by /init as root in the guest's root namespace, which
# plays the seed's Raspberry Pi: `eth0` (a veth trunk) with the static 192.168.0.210/24 of the
# seed's netplan file, `vlan101`/`vlan102` on it by DHCP with route metrics 10 and 20.
#
#   host: eth0 ==trunk(101,102 tagged)== sw: br0 (vlan_filtering)
#                                             |- porta (101 untagged) -- ra: lan 192.168.0.1, dnsmasq, NAT -> 198.51.100.2
#                                             '- portb (102 untagged) -- rb: lan 192.168.0.1, dnsmasq, NAT -> 203.0.113.2
#   inet: 198.51.100.1, 203.0.113.1, echo service on 192.0.2.1 (answers with the caller's address)
#
# Each check prints `VM-CHECK ok NAME` or `VM-CHECK FAIL NAME: why`; the last line is
# `VM-RESULT: N passed, M failed`. The cell (xtask/src/vm/cell.rs) is described in /vm/cell.env:
# CELL (its name), KERNEL_ABI, ATTACH (how the guard attaches on this kernel: tcx or clsact),
# USERSPACE (the Debian release the guest's tools and libraries come from), PACKAGE, PACKAGE_VERSION and PACKAGE_SHA256 (the .deb whose files the guest holds, as dpkg
# unpacks them, and the SHA-256 of its /usr/bin/multihome). Every daemon is started as the
# package's unit starts it (see `as_unit`).
# Waits and timeouts are upper bounds sized for TCG on a loaded machine; passing checks do not
# wait them out.

. /vm/cell.env

ISP_A=198.51.100.2
ISP_B=203.0.113.2
ECHO=http://192.0.2.1/
UPLINKS="vlan101 vlan102"
. /vm/checks.sh

# What the echo service saw as the caller, for curl with these options.
caller() { curl -s -m 20 --connect-timeout 15 "$@" "$ECHO" || echo "no answer"; }
addr4() { ip -4 -o addr show dev "$1" scope global | awk '{ split($4, a, "/"); print a[1]; exit }'; }

# ---- status helpers: `multihome status --json` fields of one uplink (no jq in the guest) ----
uplink_json() {
    multihome status --json $UPLINKS 2>/dev/null | tr -d ' \n' |
        sed -n "s/.*\"name\":\"$1\",\"state\"//p" | sed 's/"health".*//'
}
counter() { uplink_json "$1" | grep -o "\"$2\":[0-9]*" | head -n 1 | cut -d: -f2; }
modes() { uplink_json "$1" | grep -o '"mode":[^,}]*' | cut -d: -f2 | tr -d '"' | sort | tr '\n' ' '; }
# multihome's rules and routes (grep: iproute2 before 6.x does not filter rules by protocol),
# by number or by the name the package's /etc/iproute2/rt_protos.d gives 77.
OURS='proto (77|multihome)( |$)'
owned() { ip rule show | grep -E "$OURS"; ip route show table all | grep -E "$OURS"; }
owned_rules() { ip rule show | grep -Ec "$OURS"; }
healthy() { multihome status $UPLINKS >/dev/null 2>&1; }

# ---- the package's unit, run as systemd would run it (the guest has no systemd) ----
UNIT=/lib/systemd/system/multihome.service
unit_value() { sed -n "s/^$1=//p" "$UNIT"; }
EXEC_START=$(unit_value ExecStart)
ENV_FILE=$(unit_value EnvironmentFile)
ENV_FILE=${ENV_FILE#-} # "-": systemd starts the unit without the file too
# CapabilityBoundingSet= as setpriv takes it, by number (-all,+cap_12,...): Debian 11's setpriv
# (libcap-ng 0.7) has no names for CAP_PERFMON and CAP_BPF (Linux 5.8). A capability missing
# here fails the daemon's start, loudly.
cap_number() {
    case $1 in
    CAP_NET_ADMIN) echo 12 ;;
    CAP_PERFMON) echo 38 ;;
    CAP_BPF) echo 39 ;;
    *) echo "scenarios.sh: add $1 to cap_number" >&2 ;;
    esac
}
BOUNDING=-all$(for cap in $(unit_value CapabilityBoundingSet); do
    printf ',+cap_%s' "$(cap_number "$cap")"
done)
# LimitMEMLOCK= as prlimit takes it; without one the daemon keeps PID 1's limit (the kernel's
# default), as a service of systemd before 253 does.
MEMLOCK=$(unit_value LimitMEMLOCK | sed 's/^infinity$/unlimited/')
cp "$ENV_FILE" /run/multihome.default.shipped
# as_unit: starts the unit's ExecStart= as systemd does, in the background ($daemon): with the
# variables of its EnvironmentFile= (`$VAR` split into words), its CapabilityBoundingSet= and
# its LimitMEMLOCK=. DAEMON_WRAPPER, when set, is a command it runs under (the no-BTF
# scenario's private mount namespace). Every program in the chain execs the next, so $daemon
# is the daemon's own pid.
as_unit() {
    limits=""
    [ -z "$MEMLOCK" ] || limits="prlimit --memlock=$MEMLOCK:$MEMLOCK"
    (
        set -a
        . "$ENV_FILE"
        set +a
        eval "exec $DAEMON_WRAPPER $limits setpriv --bounding-set=$BOUNDING $EXEC_START"
    ) >/run/multihome.log 2>&1 &
    daemon=$!
}
# configure OPTION...: the package's /etc/default/multihome as the operator edits it: the
# cell's uplinks, and these options in MULTIHOME_OPTS.
configure() {
    sed "s|^MULTIHOME_OPTS=.*|MULTIHOME_OPTS=\"$*\"|" /run/multihome.default.shipped >"$ENV_FILE"
    echo "MULTIHOME_UPLINKS=\"$UPLINKS\"" >>"$ENV_FILE"
}

# The daemon's log is shown when a check failed while it ran.
start_daemon() {
    failed_before=$failed
    configure "$@"
    as_unit
    # Until healthy, or until it exits (a guard the kernel refuses under --no-rules, say).
    wait_for 120 sh -c "multihome status $UPLINKS || ! kill -0 $daemon"
    if healthy; then ok "daemon healthy ($*)"; else
        fail "daemon healthy ($*)" "status: $(multihome status $UPLINKS 2>&1 | tr '\n' ' ')"
    fi
}
stop_daemon() {
    kill -TERM "$daemon"
    wait "$daemon"
    check "daemon exits cleanly on SIGTERM" 0 "$?"
    check "nothing owned left after exit" "" "$(owned)"
    [ "$failed" = "$failed_before" ] || cat /run/multihome.log
}

# ---- the testbed ----
router() { # NAME ISP_ADDR ISP_PEER LEASE
    name=$1
    ip netns add "$name"
    ip link add "port${name#r}" type veth peer name lan netns "$name"
    ip link set "port${name#r}" netns sw
    ip link add wan netns "$name" type veth peer name "$name" netns inet
    ns "$name" ip link set lo up
    ns "$name" ip link set lan up
    ns "$name" ip addr add 192.168.0.1/24 dev lan
    ns "$name" ip link set wan up
    ns "$name" ip addr add "$2/24" dev wan
    ns "$name" ip route add default via "$3"
    ns "$name" sysctl -qw net.ipv4.ip_forward=1
    ns inet ip link set "$name" up
    ns inet ip addr add "$3/24" dev "$name"
    ns "$name" nft -f - <<NFT
table ip nat {
    chain post {
        type nat hook postrouting priority srcnat
        oifname "wan" masquerade
    }
}
NFT
    dhcp "$name" "$4" 192.168.0.1
    # The router's own LAN echo names it (the parent-device checks need to tell the routers apart).
    ECHO_NAME="router-${name#r}" ns "$name" socat TCP4-LISTEN:8080,fork,reuseaddr EXEC:/vm/http-echo &
    ns "$name" socat UDP4-RECVFROM:7,fork SYSTEM:"echo router-${name#r}" &
}
dhcp() { # ROUTER LEASE_ADDR GATEWAY: (re)starts the router's DHCP server
    if [ -f "/run/$1.dnsmasq.pid" ]; then
        pid=$(cat "/run/$1.dnsmasq.pid")
        kill "$pid"
        wait_for 20 sh -c "! kill -0 $pid"
    fi
    rm -f "/run/$1.leases"
    ns "$1" dnsmasq -u root --port=0 --interface=lan --bind-interfaces --dhcp-authoritative \
        --dhcp-range="$2,$2,255.255.255.0,1h" --dhcp-option=option:router,"$3" --no-ping \
        --dhcp-leasefile="/run/$1.leases" --pid-file="/run/$1.dnsmasq.pid" \
        --log-dhcp --log-facility="/run/$1.dnsmasq.log"
}
uplink() { # IFNAME VID METRIC: the seed's VLAN device, configured by dhclient
    ip link add link eth0 name "$1" type vlan id "$2"
    echo "$3" >"/run/metric.$1"
    dhclient -4 -sf /vm/dhclient-script -cf /vm/dhclient.conf -lf "/run/$1.lease" \
        -pf "/run/dhclient.$1.pid" "$1"
}
# stop_dhclient IFNAME: until it has exited: a dhclient started on the same pid file while the
# old one still runs exits at once (Debian 11's does, seen under TCG).
stop_dhclient() {
    pid=$(cat "/run/dhclient.$1.pid")
    kill "$pid"
    wait_for 20 sh -c "! kill -0 $pid 2>/dev/null" || echo "VM-INFO: dhclient $pid on $1 outlived SIGTERM"
    rm -f "/run/$1.lease" "/run/dhclient.$1.pid"
}

step "testbed: switch, routers A and B, internet, the seed's host"
ip link set lo up
ip netns add sw
ip netns add inet
ns inet ip link set lo up
ns inet ip addr add 192.0.2.1/32 dev lo
ns inet socat TCP4-LISTEN:80,fork,reuseaddr EXEC:/vm/http-echo &
ip link add eth0 type veth peer name trunk netns sw
ns sw ip link add br0 type bridge vlan_filtering 1
router ra "$ISP_A" 198.51.100.1 192.168.0.50
router rb "$ISP_B" 203.0.113.1 192.168.0.100
# The VLAN switch (the seed's GS308E): the trunk carries 101 and 102 tagged; each router's port
# untags one VLAN. Untagged frames from the trunk belong to no VLAN and are dropped.
for port in trunk porta portb; do
    ns sw ip link set "$port" master br0
    ns sw bridge vlan del dev "$port" vid 1
    ns sw ip link set "$port" up
done
ns sw bridge vlan add dev trunk vid 101
ns sw bridge vlan add dev trunk vid 102
ns sw bridge vlan add dev porta vid 101 pvid untagged
ns sw bridge vlan add dev portb vid 102 pvid untagged
ns sw ip link set br0 up
# The seed's netplan file: eth0 static, the VLANs by DHCP with metrics 10 and 20.
ip link set eth0 up
ip addr add 192.168.0.210/24 dev eth0
uplink vlan101 101 10
uplink vlan102 102 20
ADDR_A=$(addr4 vlan101)
ADDR_B=$(addr4 vlan102)
check "vlan101 leased from router A" 192.168.0.50 "$ADDR_A"
check "vlan102 leased from router B" 192.168.0.100 "$ADDR_B"
check "default routes by metric" "vlan101 10 vlan102 20 " \
    "$(ip route show | grep ^default | awk '{ print $5, $NF }' | tr '\n' ' ')"
if [ -z "$ADDR_A" ] || [ -z "$ADDR_B" ]; then
    ip addr; ip route; cat /run/ra.leases /run/rb.leases
    echo "VM-RESULT: $passed passed, $failed failed"
    exit 1
fi
ip -d link show vlan102 | grep -q "vlan protocol 802.1Q id 102" && ok "vlan102 is an 802.1Q device" ||
    fail "vlan102 is an 802.1Q device" "$(ip -d link show vlan102)"

step "baseline without multihome: the seed's problem"
check "unbound traffic leaves by ISP A" "$ISP_A" "$(caller)"
check "bound to vlan102's address: black-holed via A" "$ISP_A" "$(caller --interface "host!$ADDR_B")"

step "the package: $PACKAGE as dpkg unpacks it, its unit as systemd starts it"
check "the guest runs the package's binary" "$PACKAGE_SHA256" "$(sha256sum /usr/bin/multihome | cut -d' ' -f1)"
check "the binary is the package's version" "multihome ${PACKAGE_VERSION%-*}" "$(multihome --version)"
# The guest's C library is its release's (Debian 11: glibc 2.31, the oldest the package
# supports); the package's binary is static and needs none of it.
glibc=$(for lib in /lib/*-linux-gnu/libc.so.6 /usr/lib/*-linux-gnu/libc.so.6; do
    [ -x "$lib" ] && "$lib" | head -n 1 && break
done)
echo "VM-INFO: user space: Debian $USERSPACE, $glibc"
if [ "$USERSPACE" = bullseye ]; then
    check "the guest's C library is Debian 11's glibc 2.31" 1 "$(echo "$glibc" | grep -c 'release version 2\.31\.')"
fi
check "the unit's ExecStart runs /usr/bin/multihome" "/usr/bin/multihome run --idle-without-uplinks" \
    "$(echo "$EXEC_START" | cut -d' ' -f1-3)"
check "the unit's EnvironmentFile is the package's /etc/default/multihome" /etc/default/multihome "$ENV_FILE"
grep -q '^MULTIHOME_OPTS=' /run/multihome.default.shipped && ok "the shipped configuration sets MULTIHOME_OPTS" ||
    fail "the shipped configuration sets MULTIHOME_OPTS" "$(cat /run/multihome.default.shipped)"
# As installed: no uplink named, so the unit's daemon idles, says why, and touches nothing.
as_unit
wait_for 60 grep -q "no uplinks configured" /run/multihome.log &&
    ok "as installed, the unit's daemon idles and says why" ||
    fail "as installed, the unit's daemon idles and says why" "$(cat /run/multihome.log)"
kill -0 "$daemon" 2>/dev/null && ok "the idle daemon keeps running" || fail "the idle daemon keeps running" "it exited"
check "the idle daemon owns nothing" "" "$(owned)"
check "the idle daemon attached nothing" "" "$(bpftool net show | grep multihome)"
check "the idle daemon runs with the unit's capabilities alone (NET_ADMIN, PERFMON, BPF)" \
    000000c000001000 "$(sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$daemon/status")"
kill -TERM "$daemon"
wait "$daemon"
check "the idle daemon exits cleanly on SIGTERM" 0 "$?"

# ---- guard only: rules absent, so the kernel sends vlan102's traffic out untagged eth0 ----
# lan_name ADDR: which router's LAN echo answers TCP from ADDR to 192.168.0.1 (on-link: the
# kernel picks eth0's prefix route, metric 0, over the VLANs' 10 and 20).
lan_name() { curl -s -m 10 --connect-timeout 8 --interface "host!$1" http://192.168.0.1:8080/ || echo "no answer"; }
mac_of() { ns "$1" ip -o link show dev lan | sed 's/.*link\/ether \([^ ]*\).*/\1/'; }
# raw_frame VID PORT DST_MAC: an 802.1Q frame tagged VID carrying a UDP datagram
# ADDR_B:PORT -> GW_B:7, written straight to eth0 (AF_PACKET); prints the first answer.
raw_frame() {
    vid=$1 port=$2 dst=$3
    set -- $(echo "$ADDR_B $GW_B" | tr . ' ')
    sum=$((0x4500 + 33 + 0x0001 + 0x4000 + 0x4011 + ($1 << 8 | $2) + ($3 << 8 | $4) + ($5 << 8 | $6) + ($7 << 8 | $8)))
    sum=$(((sum & 0xffff) + (sum >> 16)))
    sum=$(((sum & 0xffff) + (sum >> 16)))
    sum=$((~sum & 0xffff))
    bytes=""
    for h in $(echo "$dst" | tr : ' ') $(tr : ' ' </sys/class/net/eth0/address); do bytes="$bytes $((0x$h))"; done
    bytes="$bytes 129 0 $((vid >> 8)) $((vid & 255)) 8 0"
    bytes="$bytes 69 0 0 33 0 1 64 0 64 17 $((sum >> 8)) $((sum & 255)) $1 $2 $3 $4 $5 $6 $7 $8"
    bytes="$bytes $((port >> 8)) $((port & 255)) 0 7 0 13 0 0 112 114 111 98 101"
    fmt=""
    for b in $bytes; do fmt="$fmt$(printf '\\%03o' "$b")"; done
    printf "$fmt" >/run/frame
    timeout 6 socat -u UDP4-RECV:"$port" - >/run/frame.reply 2>/dev/null &
    listener=$!
    # socat starts slowly under TCG: an answer before it binds would be lost (and the kernel's
    # port-unreachable reply, sent from ADDR_B, would add a redirect to the counters).
    wait_for 20 grep -qi ":$(printf %04X "$port") " /proc/net/udp
    socat -u OPEN:/run/frame INTERFACE:eth0
    wait "$listener"
    head -n 1 /run/frame.reply
}
# guard_moves_wrong_tag LABEL: the guard (whatever the rules do) moves a frame tagged 101 from
# vlan102's current address to vlan102's current device, and counts it.
guard_moves_wrong_tag() {
    before=$(counter vlan102 redirected)
    check "$1: frame tagged 101 from $ADDR_B is moved to router B" router-b \
        "$(raw_frame 101 $((40010 + passed)) "$MAC_A")"
    after=$(counter vlan102 redirected)
    [ "$after" -gt "$before" ] && ok "$1: the guard counted the redirect ($before -> $after)" ||
        fail "$1: the guard counted the redirect" "redirected $before -> $after"
}
GW_B=192.168.0.1
MAC_A=$(mac_of ra)
MAC_B=$(mac_of rb)
# In the seed, eth0's untagged port reaches no router, so the kernel would hold the packet in
# ARP and it would never reach the guard (a known limit, see DESIGN.md). An entry for the
# gateway on eth0 (as an earlier untagged set-up leaves) lets the packet leave eth0 untagged.
ip neigh replace 192.168.0.1 lladdr "$MAC_B" dev eth0 nud permanent

step "scenario 2 (baseline): the parent device without the guard"
check "TCP from vlan102's address leaves untagged eth0: lost" "no answer" "$(lan_name "$ADDR_B")"
check "frame tagged 101 from vlan102's address reaches router A" router-a "$(raw_frame 101 40002 "$MAC_A")"

# ---- `multihome check`: what it says must be what the daemon then does ----
# run_check [WRAPPER...]: runs `multihome check` on the uplinks (under WRAPPER), shows its
# output as VM-INFO lines, and leaves it in $check_out, its exit status in $check_rc.
run_check() {
    check_out=$("$@" multihome check $UPLINKS 2>&1)
    check_rc=$?
    echo "$check_out" | sed 's/^/VM-INFO: multihome check: /'
}
# The uplinks' findings: every line but the ones of fixed words (docs/operations.md).
# Findings: check's lines but its summary lines and log lines (`[TIME LEVEL ] ...`, stderr).
findings() { echo "$check_out" | grep -Ev '^(kernel|guard|steer|uplinks|note|no findings): |^\[[0-9TZ:.-]+ +[A-Z]+ *\] '; }
# Clsact works wherever the guard loads; TCX from 6.6.
case $ATTACH in
tcx) WAYS="tcx and clsact" ;;
*) WAYS=clsact ;;
esac
GUARD_LINE="guard: loads; attaches by $WAYS (auto uses $ATTACH); redirect helper ok"
# check_guard LABEL: the guard line, and the note about TCX exactly where TCX is missing.
check_guard() {
    check "$1: check's guard line" "$GUARD_LINE" "$(echo "$check_out" | grep '^guard: ')"
    tcx_note=$(echo "$check_out" | grep -c '^note: tcx: .*; auto uses clsact$')
    [ "$ATTACH" = tcx ] && want=0 || want=1
    check "$1: check notes that TCX is missing only where it is" "$want" "$tcx_note"
}

step "multihome check on $KERNEL_ABI, then the guard only (--no-rules)"
run_check
check_guard "check"
check "check: no note about BTF, which this kernel has" "" "$(echo "$check_out" | grep '^note: .*BTF')"
check "check: the uplinks checked" "uplinks: $UPLINKS" "$(echo "$check_out" | grep '^uplinks: ')"
# The seed's two VLANs share a subnet and answer ARP for each other's addresses: two findings,
# exit 1; then check's own fixes applied, nothing to find, exit 0.
check "check: exit status 1 with findings" 1 "$check_rc"
check "check: the findings are the two VLANs' ARP flux" "vlan101 ARP flux, vlan102 ARP flux, " \
    "$(findings | sed -n 's/^\(vlan10[12]\): .*(ARP flux): .*/\1 ARP flux/p' | tr '\n' ',' | sed 's/,/, /g')"
check "check: nothing else found" 2 "$(findings | wc -l)"
arp_before=$(for u in $UPLINKS; do cat /proc/sys/net/ipv4/conf/$u/arp_ignore /proc/sys/net/ipv4/conf/$u/arp_announce; done)
findings | sed -n 's/.*: \(sysctl -w .*\)$/\1/p' | while read -r fix; do $fix >/dev/null; done
run_check
check "check: exit status 0 once its fixes are applied" 0 "$check_rc"
check "check: no findings then" 1 "$(echo "$check_out" | grep -c '^no findings: ')"
set -- $arp_before
for u in $UPLINKS; do
    sysctl -qw "net.ipv4.conf.$u.arp_ignore=$1" "net.ipv4.conf.$u.arp_announce=$2"
    shift 2
done
CHECK_AUTO=$(echo "$check_out" | sed -n 's/^guard: .*(auto uses \([a-z]*\)).*/\1/p')
start_daemon --no-rules
check "the daemon attaches as check said auto would ($CHECK_AUTO)" "$CHECK_AUTO $CHECK_AUTO " "$(modes vlan101)"
check "vlan101 guard attached by $ATTACH (uplink, parent)" "$ATTACH $ATTACH " "$(modes vlan101)"
check "vlan102 guard attached by $ATTACH (uplink, parent)" "$ATTACH $ATTACH " "$(modes vlan102)"
bpftool net show dev eth0 | grep -q "multihome" && ok "bpftool shows the guard on eth0's egress" ||
    fail "bpftool shows the guard on eth0's egress" "$(bpftool net show dev eth0 | tr '\n' ' ')"
check "no rules in guard-only mode" 0 "$(owned_rules)"
before=$(counter vlan102 redirected)
check "TCP from vlan102's address sent untagged out eth0 reaches router B" router-b "$(lan_name "$ADDR_B")"
after=$(counter vlan102 redirected)
[ "$after" -gt "$before" ] && ok "untagged: redirect counted ($before -> $after)" ||
    fail "untagged: redirect counted" "redirected $before -> $after"
before=$after
check "frame tagged 101 from vlan102's address is moved to router B" router-b "$(raw_frame 101 40004 "$MAC_A")"
after=$(counter vlan102 redirected)
[ "$after" -gt "$before" ] && ok "wrong tag: redirect counted ($before -> $after)" ||
    fail "wrong tag: redirect counted" "redirected $before -> $after"
before=$after
passed_before=$(counter vlan102 passed)
check "frame tagged 102 reaches router B" router-b "$(raw_frame 102 40005 "$MAC_B")"
check "vlan102-bound curl answered as ISP B" "$ISP_B" "$(caller --interface vlan102)"
check "right tag: nothing redirected" "$before" "$(counter vlan102 redirected)"
passed_after=$(counter vlan102 passed)
[ "$passed_after" -gt "$passed_before" ] && ok "right tag: passes counted ($passed_before -> $passed_after)" ||
    fail "right tag: passes counted" "passed $passed_before -> $passed_after"
check "bound to vlan102's address, guard only: ISP B" "$ISP_B" "$(caller --interface "host!$ADDR_B")"
check "no redirect failures" "0" "$(counter vlan102 redirect_failed)"
stop_daemon
ip neigh del 192.168.0.1 dev eth0

step "scenario 1: the seed's own check, rules and guard"
start_daemon
check "rules for both uplinks" 4 "$(owned_rules)"
check "ip names the rules' protocol from the package's rt_protos.d" 4 "$(ip rule show | grep -c 'proto multihome')"
check "curl --interface vlan102 answered as ISP B" "$ISP_B" "$(caller --interface vlan102)"
check "socket bound to vlan102's address answered as ISP B" "$ISP_B" "$(caller --interface "host!$ADDR_B")"
check "curl --interface vlan101 answered as ISP A" "$ISP_A" "$(caller --interface vlan101)"
check "socket bound to vlan101's address answered as ISP A" "$ISP_A" "$(caller --interface "host!$ADDR_A")"
check "unbound traffic still leaves by ISP A (metric 10)" "$ISP_A" "$(caller)"
check "router B's LAN from vlan102's address" router-b "$(lan_name "$ADDR_B")"
check "router A's LAN from vlan101's address" router-a "$(lan_name "$ADDR_A")"

step "scenario 3: vlan102 renumbered and its gateway moved"
stop_dhclient vlan102
ns rb ip addr flush dev lan
ns rb ip addr add 192.168.0.254/24 dev lan
GW_B=192.168.0.254
dhcp rb 192.168.0.101 "$GW_B"
ip -4 addr flush dev vlan102
dhclient -4 -sf /vm/dhclient-script -cf /vm/dhclient.conf -lf /run/vlan102.lease \
    -pf /run/dhclient.vlan102.pid -v vlan102
ADDR_B=$(addr4 vlan102)
[ -n "$ADDR_B" ] || { cat /run/rb.dnsmasq.log; ip -d addr show vlan102; ns rb ip addr; }
check "vlan102 renumbered" 192.168.0.101 "$ADDR_B"
wait_for 40 sh -c "ip route show table all | grep -E '$OURS' | grep -q 'default via 192.168.0.254 dev vlan102'" &&
    ok "vlan102's table follows the new gateway" ||
    fail "vlan102's table follows the new gateway" "$(owned | tr '\n' ';')"
wait_for 40 healthy && ok "healthy after renumbering" || fail "healthy after renumbering" "$(multihome status $UPLINKS)"
check "no rule for the old address" "" "$(owned | grep 192.168.0.100)"
check "renumbered: curl --interface vlan102 answered as ISP B" "$ISP_B" "$(caller --interface vlan102)"
check "renumbered: bound to the new address answered as ISP B" "$ISP_B" "$(caller --interface "host!$ADDR_B")"
check "renumbered: vlan101 still ISP A" "$ISP_A" "$(caller --interface "host!$ADDR_A")"
guard_moves_wrong_tag "renumbered"

step "scenario 4: vlan102 deleted and re-created"
old_index=$(cat /sys/class/net/vlan102/ifindex)
stop_dhclient vlan102
ip link del vlan102
wait_for 40 sh -c "[ \"\$(ip rule show | grep -Ec '$OURS')\" = 2 ]" && ok "vlan102's rules removed with it" ||
    fail "vlan102's rules removed with it" "$(owned | tr '\n' ';')"
check "vlan101 untouched" "$ISP_A" "$(caller --interface "host!$ADDR_A")"
uplink vlan102 102 20
ADDR_B=$(addr4 vlan102)
if [ -z "$ADDR_B" ]; then
    # dhclient waits for its lease before it backgrounds; Debian 11's (4.4.1) under TCG now and
    # then returns at once on the re-created device, silently and without one: once more.
    echo "VM-INFO: dhclient on the re-created vlan102 returned without a lease: started again"
    rm -f /run/vlan102.lease /run/dhclient.vlan102.pid
    dhclient -4 -sf /vm/dhclient-script -cf /vm/dhclient.conf -lf /run/vlan102.lease \
        -pf /run/dhclient.vlan102.pid vlan102
    ADDR_B=$(addr4 vlan102)
fi
new_index=$(cat /sys/class/net/vlan102/ifindex)
[ "$new_index" != "$old_index" ] && ok "vlan102 is a new device ($old_index -> $new_index)" ||
    fail "vlan102 is a new device" "ifindex stayed $old_index"
wait_for 60 healthy && ok "healthy after re-creation" || fail "healthy after re-creation" "$(multihome status $UPLINKS)"
check "re-created: guard re-attached by $ATTACH" "$ATTACH $ATTACH " "$(modes vlan102)"
bpftool net show dev vlan102 | grep -q "multihome" && ok "re-created: bpftool shows the guard on the new vlan102" ||
    fail "re-created: bpftool shows the guard on the new vlan102" "$(bpftool net show dev vlan102 | tr '\n' ' ')"
guard_moves_wrong_tag "re-created"
check "re-created: curl --interface vlan102 answered as ISP B" "$ISP_B" "$(caller --interface vlan102)"
check "re-created: bound to vlan102's address answered as ISP B" "$ISP_B" "$(caller --interface "host!$ADDR_B")"
stop_daemon

# ---- no BTF: Raspberry Pi OS kernels have no /sys/kernel/btf ----
# The daemon runs in a private mount namespace with an empty tmpfs over /sys/kernel/btf, so its
# loader finds no kernel BTF, as on such a kernel. What this proves: the guard loads, attaches and
# redirects without reading the kernel's BTF. What it does not: the kernel itself still has BTF,
# so a kernel built without CONFIG_DEBUG_INFO_BTF could still differ in what its verifier knows
# (the guard uses no kernel type information: no CO-RE relocation, no kfunc, no BTF-typed pointer).
step "scenario 5: no /sys/kernel/btf (as on Raspberry Pi OS), guard only"
hidden=$(unshare -m sh -c 'mount -t tmpfs nobtf /sys/kernel/btf && ls -A /sys/kernel/btf')
check "no BTF: the private namespace hides /sys/kernel/btf" "" "$hidden"
run_check unshare -m /vm/no-btf
check_guard "no BTF"
check "no BTF: check notes that BTF is not needed" \
    "note: no kernel BTF (/sys/kernel/btf/vmlinux): not needed, the guard loaded without it (it carries its own BTF and uses no CO-RE)" \
    "$(echo "$check_out" | grep '^note: .*BTF')"
check "no BTF: no finding about BTF" "" "$(findings | grep BTF)"
DAEMON_WRAPPER="unshare -m /vm/no-btf"
start_daemon --no-rules
DAEMON_WRAPPER=
check "no BTF: the daemon sees no kernel BTF" "" "$(nsenter -t "$daemon" -m ls -A /sys/kernel/btf 2>&1)"
grep -q "cannot load" /run/multihome.log && fail "no BTF: the guard loaded" "$(cat /run/multihome.log)" ||
    ok "no BTF: the guard loaded"
check "no BTF: vlan102 guard attached by $ATTACH (uplink, parent)" "$ATTACH $ATTACH " "$(modes vlan102)"
guard_moves_wrong_tag "no BTF"
stop_daemon

echo "VM-RESULT: $passed passed, $failed failed"
