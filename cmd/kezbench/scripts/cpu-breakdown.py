#!/usr/bin/env python3
# cpu-breakdown.py CADDY PROFILE MESSAGES: the server CPU per message of a
# scenario 1 profile, by what it was spent on (each sample counts once, in
# the first category whose pattern matches a frame of its stack).
import re, subprocess, sys
binp, prof, msgs = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = subprocess.run(["go", "tool", "pprof", "-traces", binp, prof], capture_output=True, text=True).stdout
cats = [  # first match wins, checked against the whole stack
    ("verify (Ed25519 + request string)", r"crypto/ed25519|curve25519-voi|kez\.\(\*Request\)\.Verify|handlers\.\(\*Handler\)\.verify"),
    ("storage commit (bolt writer)", r"storage/bolt\.\(\*Store\)\.(writer|commit)"),
    ("record lookups (bolt View)", r"storage/bolt\.\(\*Store\)\.(Lookup|LookupPrimary)"),
    ("storage append (waiting side)", r"storage/bolt\.\(\*Store\)\.Append"),
    ("hub / SSE stream", r"handlers\.\(\*Handler\)\.stream|kez/hub\.|handlers\.HubNotifier"),
    ("send handler: body read, parse, reply", r"handlers\.\(\*Handler\)\.send|handlers\.parseSend|handlers\.\(\*Handler\)\.readJSONBody"),
    # Background marking and sweeping: allocation, and the GC assists it
    # may pay, count in the category of the code that allocates.
    ("GC", r"runtime\.gcBgMarkWorker|runtime\.gcAssist|runtime\.bgsweep|runtime\.bgscavenge"),
    ("Caddy + net/http (rest of the request)", r"net/http\.\(\*conn\)\.serve|caddyhttp"),
    ("other", r"."),
]
tot = {c: 0.0 for c, _ in cats}
blocks = out.split("-----------+-------------------------------------------------------")
total = 0.0
for b in blocks[1:]:
    lines = [l for l in b.strip("\n").split("\n") if l.strip()]
    if not lines: continue
    m = re.match(r"\s*([\d.]+)(ms|s|us|µs)\s+(.*)", lines[0])
    if not m: continue
    v = float(m.group(1)) * {"s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}[m.group(2)]
    stack = "\n".join([m.group(3)] + lines[1:])
    total += v
    for c, rx in cats:
        if re.search(rx, stack):
            tot[c] += v; break
print("total %.2f s of samples, %d msgs: %.1f us/msg" % (total, msgs, total / msgs * 1e6))
for c, _ in cats:
    print("  %-42s %6.1f us/msg  %5.1f%%" % (c, tot[c] / msgs * 1e6, 100 * tot[c] / total if total else 0))
