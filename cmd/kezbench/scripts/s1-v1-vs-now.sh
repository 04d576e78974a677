#!/usr/bin/env bash
# s1-v1-vs-now.sh [ROUNDS]: scenario 1 of v1 (d550cf8, the last commit before
# protocol v2) and of this checkout, alternately, ROUNDS pairs (default 5),
# each run a fresh server and data directory (s1-cpu.sh); then the mean rate
# of each and their ratio, which issue 11 wants within 10 %.
#
# Builds go to /tmp/kez-v1-bin (once) and /tmp/kez-now-bin (every time);
# v1's sources to a temporary git worktree. Run it on a machine nobody else
# is using: the rate follows the CPU the two processes get.
set -eu
rounds=${1:-5}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
v1=d550cf8
if [ ! -x /tmp/kez-v1-bin/kezbench ]; then
	wt=$(mktemp -d)
	git -C "$repo" worktree add -q --detach "$wt" "$v1"
	(cd "$wt" && mkdir -p /tmp/kez-v1-bin && go build -o /tmp/kez-v1-bin/caddy ./cmd/caddy && go build -o /tmp/kez-v1-bin/kezbench ./cmd/kezbench)
	mkdir -p /tmp/kez-v1-src/cmd/kezbench && cp "$wt/cmd/kezbench/Caddyfile.bench" /tmp/kez-v1-src/cmd/kezbench/
	git -C "$repo" worktree remove --force "$wt"
fi
mkdir -p /tmp/kez-now-bin
(cd "$repo" && go build -o /tmp/kez-now-bin/caddy ./cmd/caddy && go build -o /tmp/kez-now-bin/kezbench ./cmd/kezbench)
# v1's tool has no -pid and -admin: the same script without them.
sed 's/ -pid $pid -admin 127.0.0.1:7419//' "$here/s1-cpu.sh" >/tmp/kez-s1-cpu-v1.sh
out=$(mktemp)
v1run() { bash /tmp/kez-s1-cpu-v1.sh /tmp/kez-v1-bin /tmp/kez-v1-src "v1-$1" | tee -a "$out"; }
nowrun() { bash "$here/s1-cpu.sh" /tmp/kez-now-bin "$repo" "now-$1" | tee -a "$out"; }
# The order turns every round (v1 now, now v1, ...): the rate drifts over
# a campaign (the machine's other load, the host), and a fixed order would
# give the drift of one run's distance to the same side every time.
for i in $(seq "$rounds"); do
	if [ $((i % 2)) = 1 ]; then v1run "$i"; nowrun "$i"; else nowrun "$i"; v1run "$i"; fi
done
python3 - "$out" <<'PY'
import re, statistics as st, sys
rows, cur = {}, None
for l in open(sys.argv[1]):
    m = re.match(r'== (\S+)-\d+ ', l)
    if m:
        cur = m.group(1)
    m = re.search(r'scenario 1: (\d+) msg/s.*server (-?\d+) µs/msg, tool (-?\d+)', l)
    if m and cur:
        rows.setdefault(cur, []).append(tuple(map(int, m.groups())))
for k, v in rows.items():
    print("%-3s msg/s %s: mean %.0f; server µs/msg median %.0f, tool %.0f" % (
        k, [r[0] for r in v], st.mean(r[0] for r in v), st.median(r[1] for r in v), st.median(r[2] for r in v)))
if "v1" in rows and "now" in rows:
    print("now / v1: %.3f (issue 11 wants at least 0.9)" % (st.mean(r[0] for r in rows["now"]) / st.mean(r[0] for r in rows["v1"])))
PY
rm -f "$out"
