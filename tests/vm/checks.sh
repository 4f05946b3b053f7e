# The VM guests' check helpers, sourced by their scripts. Each check prints `VM-CHECK ok NAME`
# or `VM-CHECK FAIL NAME: why`; the script's last line is `VM-RESULT: N passed, M failed`,
# which xtask's qemu.rs reads.
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "VM-CHECK ok $1"; }
fail() { failed=$((failed + 1)); echo "VM-CHECK FAIL $1: $2"; }
# check NAME EXPECTED ACTUAL
check() { if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "expected '$2', got '$3'"; fi; }
# holds NAME COMMAND...: the command succeeds
holds() { name=$1; shift; if "$@" >/dev/null 2>&1; then ok "$name"; else fail "$name" "\`$*\` failed"; fi; }
step() { echo "VM-STEP: [$(cut -d' ' -f1 /proc/uptime) s] $*"; }
ns() { n=$1; shift; nsenter --net="/run/netns/$n" "$@"; }
# wait_for SECONDS COMMAND...: polls every 0.2 s until COMMAND succeeds or SECONDS of the
# guest's clock have passed (a count of polls would stretch with every slow poll under TCG).
uptime_s() { cut -d. -f1 /proc/uptime; }
wait_for() {
    deadline=$(($(uptime_s) + $1)); shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(uptime_s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
