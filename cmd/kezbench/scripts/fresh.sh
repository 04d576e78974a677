#!/usr/bin/env bash
# fresh.sh BINDIR TAG [kezbench flags…]: one kezbench run against a fresh
# server (Caddyfile.bench, empty data directory), with -pid and -admin set,
# so scenarios 1 and 4 report CPU per message and scenario 3 reads RSS.
# The JSON goes to results-TAG.json here, the tool's output to TAG.log.
# Extra environment for the server only: SERVER_ENV="GOGC=200".
#
#   cmd/kezbench/scripts/fresh.sh /tmp/kez-bin s1-a -run 1
#   SERVER_ENV=GOGC=200 cmd/kezbench/scripts/fresh.sh /tmp/kez-bin s1-gogc200 -run 1
set -u
bin=$1; tag=$2; shift 2
cfg=$(cd "$(dirname "$0")/.." && pwd)/Caddyfile.bench
data=/tmp/kezbench-fresh-$tag
rm -rf "$data" && mkdir -p "$data"
ulimit -n 20000
# shellcheck disable=SC2086 # SERVER_ENV is a list of NAME=value words
env ${SERVER_ENV:-} KEZBENCH_DATA="$data" XDG_DATA_HOME="$data/xdg" "$bin/caddy" run --config "$cfg" --adapter caddyfile >"$data/caddy.log" 2>&1 &
pid=$!
for _ in $(seq 50); do curl -sf 127.0.0.1:7480/v1/healthz >/dev/null && break; sleep 0.2; done
echo "== $tag $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) server env: ${SERVER_ENV:-none}"
"$bin/kezbench" -url http://127.0.0.1:7480 -pid $pid -admin 127.0.0.1:7419 -json "results-$tag.json" "$@" >"$tag.log" 2>&1
status=$?
grep -v "registered [0-9]*/" "$tag.log" | sed -n '/^kezbench /,$p'
echo "kezbench exit status $status, load after $(cut -d' ' -f1-3 /proc/loadavg)"
kill $pid
wait $pid 2>/dev/null
rm -rf "$data"
exit $status
