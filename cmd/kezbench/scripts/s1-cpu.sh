#!/usr/bin/env bash
# s1-cpu.sh BINDIR CONFIGDIR TAG: one run of kezbench's scenario 1 against a
# fresh server, with the server's and the tool's CPU per accepted message.
#
# BINDIR holds a caddy and a kezbench built from the same checkout, CONFIGDIR
# is that checkout (its cmd/kezbench/Caddyfile.bench is used). While the tool
# runs, the server's messages_accepted_total (Caddy's /metrics on the admin
# address) and both processes' CPU time (/proc/PID/stat) are sampled every
# 0.5 s; CPU per message is taken over the samples in which the counter moved,
# so registration, sealing, signing and the drain are left out.
#
#   go build -o /tmp/kez-v2-bin/caddy ./cmd/caddy && go build -o /tmp/kez-v2-bin/kezbench ./cmd/kezbench
#   cmd/kezbench/scripts/s1-cpu.sh /tmp/kez-v2-bin "$PWD" v2-1
set -u
bin=$1; cfgdir=$2; tag=$3
data=/tmp/kezbench-s1-$tag
rm -rf "$data" && mkdir -p "$data"
ulimit -n 20000
KEZBENCH_DATA=$data XDG_DATA_HOME=$data/xdg "$bin/caddy" run --config "$cfgdir/cmd/kezbench/Caddyfile.bench" --adapter caddyfile >"$data/caddy.log" 2>&1 &
pid=$!
for _ in $(seq 50); do curl -sf 127.0.0.1:7480/v1/healthz >/dev/null && break; sleep 0.2; done
echo "== $tag $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin/kezbench" -url http://127.0.0.1:7480 -run 1 -pid $pid -admin 127.0.0.1:7419 -json "$data/kezbench.json" >"$data/kezbench.log" 2>&1 &
bp=$!
while kill -0 $bp 2>/dev/null; do
	c=$(curl -s --max-time 1 127.0.0.1:7419/metrics | awk '/^[a-z_]*messages_accepted_total/ {print $2}' | head -1)
	echo "$(date +%s.%N) ${c:-0} $(awk '{print $14+$15}' /proc/$pid/stat) $(awk '{print $14+$15}' /proc/$bp/stat 2>/dev/null || echo 0)" >>"$data/samples"
	sleep 0.5
done
wait $bp
echo "kezbench exit status $?"
python3 - "$data/kezbench.json" "$data/samples" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rows = [tuple(map(float, l.split())) for l in open(sys.argv[2]) if len(l.split()) == 4]
i0 = next(i for i, r in enumerate(rows) if r[1] > 0) - 1
last = max(r[1] for r in rows)
i1 = next(i for i, r in enumerate(rows) if r[1] == last)
n = rows[i1][1] - rows[i0][1]
hz = 100  # clock ticks per second in /proc/PID/stat
srv, tool = (rows[i1][2] - rows[i0][2]) / hz, (rows[i1][3] - rows[i0][3]) / hz
for r in d["results"]:
    a = r["accept_latency"]
    print("  scenario %s: %.0f msg/s, %d accepted, %d errors, exactly once %s, load %.2f, accept p50 %.1f ms p99 %.1f ms; "
          "server %.0f µs/msg, tool %.0f µs/msg" % (r["id"], r["msgs_per_s"], r["accepted"], r["errors"], d["ok"],
          r["load_avg_1m_before"], a.get("p50_ms", 0), a.get("p99_ms", 0), srv / n * 1e6, tool / n * 1e6))
PY
kill $pid
wait $pid 2>/dev/null
rm -rf "$data"
