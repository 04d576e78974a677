#!/usr/bin/env bash
# nats-s1.sh BINDIR CONFIGDIR TAG [INSTANCES]: scenario 1 against KEZ chat
# on a fresh 3-node NATS cluster (cmd/kezbench/nats/, R3, sync_interval
# always), through the load balancer to two instances (INSTANCES 2, the
# default) or straight to one (1); 20 s of sending. Once sends flow, for 8 s: a CPU profile
# of instance 1 (Caddy's admin /debug/pprof), and the CPU time of every
# process (three nats-server, the instances, the load balancer, kezbench)
# per message accepted meanwhile (the instances' messages_accepted_total).
#
#   go build -o /tmp/natsperf-after/caddy ./cmd/caddy && go build -o /tmp/natsperf-after/kezbench ./cmd/kezbench
#   cmd/kezbench/scripts/nats-s1.sh /tmp/natsperf-after "$PWD" after 2
#
# nats-server (2.12 or newer) must be on PATH.
set -u
bin=$1; cfgdir=$2; tag=$3; n=${4:-2}
data=/tmp/kezbench-nats-$tag
rm -rf "$data" /tmp/kezbench-nats && mkdir -p "$data"
ulimit -n 20000
pids=()
names=()
start() { # name, command...
	local name=$1
	shift
	"$@" >"$data/$name.log" 2>&1 &
	pids+=($!)
	names+=("$name")
}
for i in 1 2 3; do start nats-$i nats-server -c "$cfgdir/cmd/kezbench/nats/nats-$i.conf"; done
for i in 1 2 3; do
	for _ in $(seq 100); do curl -sf "127.0.0.1:782$((i + 1))/healthz" >/dev/null && break; sleep 0.2; done
done
for i in $(seq "$n"); do
	start caddy-$i env KEZ_PORT=749$i KEZ_ADMIN=741$((6 + i)) XDG_DATA_HOME=$data/xdg-$i \
		"$bin/caddy" run --config "$cfgdir/cmd/kezbench/nats/Caddyfile.instance" --adapter caddyfile
done
url=http://127.0.0.1:7491
if [ "$n" = 2 ]; then
	start caddy-lb env XDG_DATA_HOME=$data/xdg-lb "$bin/caddy" run --config "$cfgdir/cmd/kezbench/nats/Caddyfile.lb" --adapter caddyfile
	url=http://127.0.0.1:7490
fi
for i in $(seq "$n"); do
	for _ in $(seq 100); do curl -sf "127.0.0.1:749$i/v1/healthz" >/dev/null && break; sleep 0.5; done
done
[ "$n" = 2 ] && sleep 6 # one health_interval for the load balancer
count() { # messages accepted by all instances
	local sum=0 c
	for i in $(seq "$n"); do
		c=$(curl -s --max-time 2 "127.0.0.1:741$((6 + i))/metrics" | awk '/^[a-z_]*messages_accepted_total/ {print $2}' | head -1)
		sum=$(echo "$sum + ${c:-0}" | bc)
	done
	echo "$sum"
}
cpu() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # clock ticks (10 ms)
start kezbench "$bin/kezbench" -url "$url" -label "nats-$tag" -run 1 -duration 20s -json "$data/kezbench.json"
bp=${pids[-1]}
prev=$(count)
for _ in $(seq 240); do # wait until sends flow
	sleep 0.5
	c=$(count)
	[ "$(echo "$c - $prev > 300" | bc)" = 1 ] && break
	prev=$c
done
sleep 1
load=$(cut -d' ' -f1-3 /proc/loadavg)
c0=$(count)
before=()
for p in "${pids[@]}"; do before+=("$(cpu "$p")"); done
curl -s -o "$data/caddy-1.pprof" 'http://127.0.0.1:7417/debug/pprof/profile?seconds=8'
after=()
for p in "${pids[@]}"; do after+=("$(cpu "$p")"); done
c1=$(count)
wait "$bp"
msgs=$(echo "$c1 - $c0" | bc)
echo "== $tag: $n instance(s), load $load, $msgs messages in the 8 s window ($(echo "$msgs / 8" | bc) msg/s)"
total=0
for k in "${!pids[@]}"; do
	d=$((after[k] - before[k]))
	total=$((total + d))
	[ "$msgs" -gt 0 ] && printf '  %-9s %6d ms CPU  %6.0f µs/msg\n' "${names[k]}" $((d * 10)) "$(echo "$d * 10000 / $msgs" | bc -l)"
done
[ "$msgs" -gt 0 ] && printf '  %-9s %6d ms CPU  %6.0f µs/msg\n' all $((total * 10)) "$(echo "$total * 10000 / $msgs" | bc -l)"
grep -E 'msg/s|accepted|exactly' "$data/kezbench.log" | head -8
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
wait 2>/dev/null
cp "$data/caddy-1.pprof" "$data/kezbench.json" /tmp/ 2>/dev/null
mv "/tmp/caddy-1.pprof" "/tmp/kezbench-nats-$tag.pprof"
mv "/tmp/kezbench.json" "/tmp/kezbench-nats-$tag.json"
