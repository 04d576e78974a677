#!/usr/bin/env bash
# s1-profile.sh BINDIR CONFIGDIR TAG: a 15 s scenario 1 with an 8 s CPU
# profile of the server, taken once sends flow, and the server's CPU per
# accepted message split by what it was spent on (cpu-breakdown.py).
#
#   cmd/kezbench/scripts/s1-profile.sh /tmp/kez-v2-bin "$PWD" v2-p1
set -u
bin=$1; cfgdir=$2; tag=$3
here=$(cd "$(dirname "$0")" && pwd)
data=/tmp/kezbench-prof-$tag
rm -rf "$data" && mkdir -p "$data"
ulimit -n 20000
KEZBENCH_DATA=$data XDG_DATA_HOME=$data/xdg "$bin/caddy" run --config "$cfgdir/cmd/kezbench/Caddyfile.bench" --adapter caddyfile >"$data/caddy.log" 2>&1 &
pid=$!
for _ in $(seq 50); do curl -sf 127.0.0.1:7480/v1/healthz >/dev/null && break; sleep 0.2; done
count() { curl -s 127.0.0.1:7419/metrics | awk '/^[a-z_]*messages_accepted_total/ {print $2}' | head -1; }
"$bin/kezbench" -url http://127.0.0.1:7480 -run 1 -duration 15s -json "$data/kezbench.json" >"$data/kezbench.log" 2>&1 &
bp=$!
prev=$(count)
for _ in $(seq 240); do # wait until sends flow
	sleep 0.5
	c=$(count)
	[ "$(echo "${c:-0} - ${prev:-0} > 300" | bc)" = 1 ] && break
	prev=$c
done
sleep 1
load=$(cut -d' ' -f1 /proc/loadavg)
c0=$(count)
curl -s -o "/tmp/kezbench-server-$tag.pprof" 'http://127.0.0.1:7419/debug/pprof/profile?seconds=8'
c1=$(count)
wait $bp
kill $pid
wait $pid 2>/dev/null
n=$(echo "$c1 - $c0" | bc)
echo "== $tag: load $load, $n messages in the 8 s profile"
python3 "$here/cpu-breakdown.py" "$bin/caddy" "/tmp/kezbench-server-$tag.pprof" "$n"
rm -rf "$data"
