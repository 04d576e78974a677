#!/usr/bin/env bash
# Tests of the web client: unit tests (node --test, protocol crypto against
# testdata/kez-v1.json and kez-v2.json) and end-to-end tests in headless Chromium against a
# Caddy built from ./cmd/caddy. Installs what it needs: playwright-core from
# npm (dev only, no browser download) and Debian's chromium if absent.
#
#   bash web/test/run.sh            # everything
#   bash web/test/run.sh unit       # unit tests only (needs only node)
#   bash web/test/run.sh e2e        # end-to-end only
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) # web/
repo=$(cd "$here/.." && pwd)
what=${1:-all}

if [[ $what == all || $what == unit ]]; then
	echo "== web: unit tests"
	(cd "$here" && node --test test/*.test.mjs)
fi

if [[ $what == all || $what == e2e ]]; then
	echo "== web: end-to-end tests (Chromium + Caddy)"
	if [[ ! -x ${CHROMIUM:-/usr/bin/chromium} ]]; then
		echo "installing Debian's chromium"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq chromium >/dev/null
	fi
	# Installed again when package-lock.json changed since (a new dev dependency).
	if [[ ! -d $here/node_modules/playwright-core || $here/package-lock.json -nt $here/node_modules/.package-lock.json ]]; then
		(cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
	fi
	mkdir -p "$repo/test-artifacts"
	(cd "$here" && node --test --test-concurrency=1 test/e2e.mjs test/e2e-trust.mjs test/e2e-federation.mjs test/e2e-messenger.mjs test/e2e-axe.mjs)
fi
