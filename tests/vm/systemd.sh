#!/bin/sh
# The systemd cell's script (xtask/src/vm/systemd.rs): Debian 13's systemd is PID 1, and this
# runs from a unit once multi-user.target is reached. It installs the package with the guest's
# own dpkg and drives it with systemctl, as an operator would; the kernel's state is read with
# ip and bpftool, the service's with systemctl and journalctl.
#
#   host: up1 192.168.0.50/24  (default via 192.168.0.1 metric 10) == veth == ra: lan 192.168.0.1
#         up2 192.168.0.100/24 (default via 192.168.0.1 metric 20) == veth == rb: lan 192.168.0.1
#
# The stream: ping bound to up2's address, 100 packets/s to 198.51.100.7 (no router forwards
# it: traffic stays in the guest); each router counts what reaches it from 192.168.0.0/24 with
# nftables. Without multihome it all goes by the metric-10 default route to router A; with
# multihome it must all reach router B, and 0 router A, whatever systemctl or dpkg does.
# /vm/cell.env: PREVIOUS_DEB/VERSION (what is installed first), CURRENT_DEB/VERSION (the
# upgrade), KERNEL_ABI.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# busybox's applets after the real tools (insmod, awk, ...).
mkdir -p /run/busybox && busybox --install -s /run/busybox && PATH=$PATH:/run/busybox
finished=
end() {
    [ -n "$finished" ] || echo "VM-CHECK FAIL script: ended early (last step above)"
    echo "VM-RESULT: ${passed:-0} passed, ${failed:-0} failed"
    sync
    systemctl start --no-block --job-mode=replace-irreversibly poweroff.target
}
trap end EXIT
. /vm/checks.sh
. /vm/cell.env

ADDR_B=192.168.0.100
DEST=198.51.100.7
PINS=/sys/fs/bpf/multihome
rules() { ip -N rule show | grep -c 'proto 77'; }
routes() { ip -N route show table all | grep -c 'proto 77'; }
pins() { ls -A "$PINS" 2>/dev/null | tr '\n' ' '; }
# The guard's TCX links (their ids survive a hand-over in place).
tcx_links() { bpftool link show | grep -E '^[0-9]+: tcx' | cut -d: -f1 | sort -n | tr '\n' ' '; }
main_pid() { systemctl show -p MainPID --value multihome; }
journal() { journalctl -q -o cat -u multihome --no-pager; }
# count PATTERN: journal lines of the unit matching PATTERN.
count() { journal | grep -c -- "$1"; }
healthy() { multihome status >/dev/null 2>&1; }
# Settled: healthy, and every device's guard on TCX (auto mode hooks by clsact first and moves
# each device to TCX in the background).
settled() { healthy && [ -z "$(pins | tr ' ' '\n' | grep '^clsact_')" ] && [ -n "$(tcx_links)" ]; }
at() { ns "$1" nft list counter ip count stream | grep -o 'packets [0-9]*' | cut -d' ' -f2; }
stream_start() {
    for r in ra rb; do ns "$r" nft reset counter ip count stream >/dev/null; done
    ping -q -I "$ADDR_B" -i 0.01 "$DEST" >/run/ping.out 2>&1 &
    stream=$!
    rm -f /run/poll.stop /run/poll.log
    # Every rule the kernel deletes meanwhile (nothing but multihome touches rules here).
    ip -N monitor rule >/run/rules.events 2>&1 &
    monitor=$!
    # A tight poll of multihome's rules while systemctl or dpkg runs.
    (while [ ! -e /run/poll.stop ]; do rules >>/run/poll.log; done) &
    poller=$!
    sleep 1
}
# Ends the stream, the poll and the monitor: $sent packets were sent, $deleted rules deleted.
stream_end() {
    touch /run/poll.stop
    wait "$poller"
    kill -INT "$stream"
    wait "$stream"
    kill "$monitor"
    wait "$monitor" 2>/dev/null # its "Terminated"
    sent=$(grep -o '[0-9]* packets transmitted' /run/ping.out | cut -d' ' -f1)
    deleted=$(grep -c '^Deleted' /run/rules.events)
}
stream_stop() { # LABEL
    stream_end
    polls=$(wc -l </run/poll.log)
    fewest=$(sort -n /run/poll.log | head -n 1)
    step "$1: $sent sent, router A $(at ra), router B $(at rb); rules polled $polls times, fewest $fewest; $deleted rule deletions"
    check "$1: the stream reached the wrong router (A) 0 times" 0 "$(at ra)"
    check "$1: every packet of the stream reached router B" "$sent" "$(at rb)"
    check "$1: the rules never disappeared ($polls polls)" "$RULES" "$fewest"
    check "$1: no rule was deleted (ip monitor)" 0 "$deleted"
}

step "boot: $(uname -r), PID 1 is $(cat /proc/1/comm), system $(systemctl is-system-running)"
check "PID 1 is systemd" systemd "$(cat /proc/1/comm)"
check "systemd mounted the bpf filesystem" bpf_fs "$(stat -f -c %T /sys/fs/bpf)"
while read -r module; do
    insmod "$module" || fail "boot" "insmod $module"
done </vm/modules.order

step "testbed: up1 to router A, up2 to router B, both 192.168.0.1"
ip link set lo up
for r in a b; do
    n=1; [ "$r" = b ] && n=2
    ip netns add "r$r"
    ip link add "up$n" type veth peer name lan netns "r$r"
    ns "r$r" ip link set lo up
    ns "r$r" ip link set lan up
    ns "r$r" ip addr add 192.168.0.1/24 dev lan
    ns "r$r" nft -f - <<NFT
table ip count {
    counter stream { }
    chain pre {
        type filter hook prerouting priority 0
        ip saddr 192.168.0.0/24 ip daddr $DEST counter name stream
    }
}
NFT
done
ip link set up1 up
ip link set up2 up
ip addr add 192.168.0.50/24 dev up1
ip addr add "$ADDR_B/24" dev up2
ip route add default via 192.168.0.1 dev up1 metric 10
ip route add default via 192.168.0.1 dev up2 metric 20
stream_start
stream_end
step "without multihome: $sent sent, router A $(at ra), router B $(at rb)"
[ "$(at ra)" -gt 0 ] && ok "without multihome the stream from up2's address goes to router A" ||
    fail "without multihome the stream from up2's address goes to router A" "router A $(at ra), B $(at rb)"

step "install $PREVIOUS_DEB with dpkg"
dpkg -i "$PREVIOUS_DEB" </dev/null
check "dpkg -i of $PREVIOUS_VERSION" 0 "$?"
check "installed: the service is enabled" enabled "$(systemctl is-enabled multihome)"
wait_for 60 systemctl is-active multihome
check "installed: the service is active" active "$(systemctl is-active multihome)"
status=$(systemctl status multihome --no-pager 2>&1)
echo "$status" | sed 's/^/VM-INFO: /'
echo "$status" | grep -q 'Status: "no uplinks configured: set MULTIHOME_UPLINKS' &&
    ok "idle: systemctl status says why (no uplinks configured)" ||
    fail "idle: systemctl status says why" "$(echo "$status" | tr '\n' ' ')"
[ "$(count 'no uplinks configured')" -ge 1 ] && ok "idle: the journal says why" ||
    fail "idle: the journal says why" "$(journal | tr '\n' ' ')"
check "idle: no rules" 0 "$(rules)"

step "configure: MULTIHOME_UPLINKS=\"up1 up2\" in /etc/default/multihome, systemctl restart"
sed -i 's/^#*MULTIHOME_UPLINKS=.*/MULTIHOME_UPLINKS="up1 up2"/' /etc/default/multihome
systemctl restart multihome
check "configured: systemctl restart" 0 "$?"
wait_for 120 settled && ok "configured: healthy, guard on TCX" ||
    fail "configured: healthy, guard on TCX" "$(multihome status 2>&1 | tr '\n' ' '); pins $(pins)"
RULES=$(rules)
[ "$RULES" -gt 0 ] && ok "configured: $RULES rules with protocol 77" || fail "configured: rules" "none"
step "status: $(multihome status 2>&1 | tr '\n' ';')"

step "systemctl restart under the stream"
pid=$(main_pid)
links=$(tcx_links)
pinned=$(pins)
started=$(count 'running: ')
stream_start
systemctl restart multihome
check "restart: systemctl restart" 0 "$?"
wait_for 120 healthy
stream_stop "restart"
[ "$(main_pid)" != "$pid" ] && [ "$(main_pid)" != 0 ] && ok "restart: a new daemon ($pid -> $(main_pid))" ||
    fail "restart: a new daemon" "MainPID $pid -> $(main_pid)"
check "restart: the old daemon kept the kernel's state for the next" 1 \
    "$(count 'restart: leaving rules, routes and the guard for the next instance')"
check "restart: one start" $((started + 1)) "$(count 'running: ')"
check "restart: the same TCX links (handed over in place)" "$links" "$(tcx_links)"
check "restart: the same pins" "$pinned" "$(pins)"

step "systemctl reload"
pid=$(main_pid)
reloads=$(count 'reloaded: ')
systemctl reload multihome
check "reload: systemctl reload" 0 "$?"
check "reload: the same daemon" "$pid" "$(main_pid)"
check "reload: still active" active "$(systemctl is-active multihome)"
[ "$(count 'reloaded: ')" -gt "$reloads" ] && ok "reload: the journal has the reload's report" ||
    fail "reload: the journal has the reload's report" "$(journal | tail -n 5 | tr '\n' ' ')"
journal | grep -A3 'reloaded: ' | tail -n 4 | sed 's/^/VM-INFO: /'
check "reload: rules kept" "$RULES" "$(rules)"

step "a unit on up2's slice (Slice=multihome-up2.slice): picked up without a restart of either"
mkdir -p /etc/systemd/system/multihome-.slice.d
cat >/etc/systemd/system/multihome-.slice.d/10-multihome.conf <<'UNIT'
[Unit]
Wants=multihome.service
After=multihome.service
UNIT
cat >/etc/systemd/system/mh-steered.service <<UNIT
[Service]
Slice=multihome-up2.slice
ExecStart=/usr/bin/ping -q -i 0.01 $DEST
UNIT
systemctl daemon-reload
pid=$(main_pid)
for r in ra rb; do ns "$r" nft reset counter ip count stream >/dev/null; done
systemctl start mh-steered
check "slice: the unit runs" active "$(systemctl is-active mh-steered)"
check "slice: the unit's cgroup is below up2's slice" \
    /multihome.slice/multihome-up2.slice/mh-steered.service \
    "$(systemctl show -p ControlGroup --value mh-steered)"
wait_for 30 sh -c 'multihome status --json | grep -q mh-steered.service' &&
    ok "slice: multihome status lists the unit" ||
    fail "slice: multihome status lists the unit" "$(multihome status 2>&1 | tr '\n' ' ')"
check "slice: multihome was not restarted" "$pid" "$(main_pid)"
systemctl restart multihome
check "slice: systemctl restart multihome under the steered unit" 0 "$?"
wait_for 120 healthy
sleep 1
systemctl stop mh-steered
step "slice: router A $(at ra), router B $(at rb)"
check "slice: the unit's unbound pings reached the wrong router (A) 0 times" 0 "$(at ra)"
[ "$(at rb)" -gt 0 ] && ok "slice: the unit's unbound pings reached router B" ||
    fail "slice: the unit's unbound pings reached router B" "router B $(at rb)"
check "slice: rules kept" "$RULES" "$(rules)"

step "systemctl stop"
systemctl stop multihome
check "stop: systemctl stop" 0 "$?"
check "stop: inactive" inactive "$(systemctl is-active multihome)"
check "stop: no protocol-77 rules" 0 "$(rules)"
check "stop: no protocol-77 routes" 0 "$(routes)"
check "stop: no pins" "" "$(pins)"
check "stop: no guard on the uplinks" "" "$(bpftool net show | grep multihome)"
[ "$(count 'stop: removing what multihome installed')" -ge 1 ] && ok "stop: the journal says it removed its state" ||
    fail "stop: the journal says it removed its state" "$(journal | tail -n 3 | tr '\n' ' ')"

step "systemctl start, then upgrade to $CURRENT_VERSION with dpkg -i under the stream"
systemctl start multihome
wait_for 120 settled && ok "start: healthy, guard on TCX" || fail "start: healthy" "$(multihome status 2>&1 | tr '\n' ' ')"
pid=$(main_pid)
started=$(count 'running: ')
unit_started=$(count '^Started multihome.service')
kept=$(count 'restart: leaving rules')
stream_start
dpkg -i "$CURRENT_DEB" </dev/null
check "upgrade: dpkg -i of $CURRENT_VERSION" 0 "$?"
wait_for 120 healthy
stream_stop "upgrade"
check "upgrade: the installed version" "$CURRENT_VERSION" "$(dpkg-query -W -f '${Version}' multihome)"
check "upgrade: the daemon started exactly once" $((started + 1)) "$(count 'running: ')"
check "upgrade: systemd started the unit exactly once" $((unit_started + 1)) "$(count '^Started multihome.service')"
check "upgrade: the old daemon kept the kernel's state for the new one" $((kept + 1)) "$(count 'restart: leaving rules')"
[ "$(main_pid)" != "$pid" ] && ok "upgrade: a new daemon ($pid -> $(main_pid))" || fail "upgrade: a new daemon" "MainPID stayed $pid"
check "upgrade: the configuration kept" 'MULTIHOME_UPLINKS="up1 up2"' "$(grep '^MULTIHOME_UPLINKS=' /etc/default/multihome)"

step "dpkg -r multihome"
dpkg -r multihome </dev/null
check "remove: dpkg -r" 0 "$?"
check "remove: the service is gone" inactive "$(systemctl is-active multihome)"
check "remove: no protocol-77 rules" 0 "$(rules)"
check "remove: no protocol-77 routes" 0 "$(routes)"
check "remove: no pins" "" "$(pins)"
check "remove: no guard on the uplinks" "" "$(bpftool net show | grep multihome)"
holds "remove: /etc/default/multihome stays (a conffile)" test -e /etc/default/multihome

step "dpkg --purge multihome"
dpkg --purge multihome </dev/null
check "purge: dpkg --purge" 0 "$?"
check "purge: /etc/default/multihome removed" "" "$(ls /etc/default/multihome 2>/dev/null)"
check "purge: the package is gone" "" "$(dpkg-query -W -f '${Status}' multihome 2>/dev/null | grep installed)"

step "done"
finished=yes
