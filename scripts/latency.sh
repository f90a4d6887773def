#!/usr/bin/env bash
# Runs one command with its connections to the OSDs going through the latency proxy of
# rbd-diffsync-bench, which adds RTT_MS of round trip (half each way) to that traffic only:
#
#   bash scripts/latency.sh CONF RTT_MS COMMAND [ARG...]
#   bash scripts/latency.sh /tmp/c/ceph.conf 1 rbd -c /tmp/c/ceph.conf bench --io-type write \
#     --io-size 4096 --io-threads 1 --io-total 4M rbd/img
#
# The machines have no kernel traffic shaping, so the delay is added in user space: the
# LD_PRELOAD shim benches/latency/shim.c (built here with gcc) sends the command's connect()
# to an OSD address (v2 and v1, from `ceph osd dump`) to the proxy's local port for it. The
# monitor's traffic is not delayed. When the command ends, the proxy reports the bytes it
# forwarded and the CPU seconds it used. `rbd-diffsync-bench --latency-ms` does the same for
# the benchmark's contenders.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 3 ] || {
  echo "usage: $0 CONF RTT_MS COMMAND [ARG...]" >&2
  exit 2
}
conf=$1 rtt=$2
shift 2
bin=${CARGO_TARGET_DIR:-$root/target}/release/rbd-diffsync-bench
[ -x "$bin" ] || (cd "$root" && cargo build --release -q -p rbd-diffsync-benches)

dir=$(mktemp -d /tmp/rbd-diffsync-latency.XXXXXX)
trap 'rm -rf "$dir"' EXIT
gcc -shared -fPIC -O2 -o "$dir/shim.so" "$root/benches/latency/shim.c" -ldl

targets=$(ceph -c "$conf" osd dump --format json | python3 -c '
import json, sys
addrs = []
for osd in json.load(sys.stdin)["osds"]:
    for a in osd["public_addrs"]["addrvec"]:
        if a["addr"] not in addrs:
            addrs.append(a["addr"])
print(" ".join(addrs))')
delay_us=$(awk -v ms="$rtt" 'BEGIN { printf "%d", ms * 1000 }')

# shellcheck disable=SC2086 # one argument per address
coproc PROXY { exec "$bin" __latency-proxy "$delay_us" $targets; }
proxy_pid=$PROXY_PID
map=()
while read -r line <&"${PROXY[0]}"; do
  [ "$line" = ready ] && break
  map+=("$line")
done
map_var=$(IFS=,; echo "${map[*]}")
echo "latency proxy $proxy_pid: +$rtt ms round trip for ${map_var//,/ }" >&2

status=0
LD_PRELOAD="$dir/shim.so" RBD_DIFFSYNC_LAT_MAP="$map_var" "$@" || status=$?

# utime and stime are fields 14 and 15 of /proc/PID/stat, in clock ticks.
ticks=$(getconf CLK_TCK)
cpu=$(awk -v t="$ticks" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$proxy_pid/stat")
exec {PROXY[1]}>&-
wait "$proxy_pid" || true
echo "latency proxy: ${cpu} CPU seconds" >&2
exit "$status"
