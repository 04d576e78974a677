#!/usr/bin/env bash
# Every check and test of the project, as CI runs it:
#   gofmt, go vet, staticcheck, go test -race (unit, storage, Caddy end-to-end),
#   and the web client's unit tests and browser tests in headless Chromium.
# Installs what it needs (Debian's chromium, playwright-core from npm) on first use.
#
#   ./scripts/test.sh          # everything
#   ./scripts/test.sh go       # Go checks and tests only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-all}

step() { printf '\n== %s\n' "$*"; }

step "gofmt"
unformatted=$(gofmt -l $(find . -name '*.go' -not -path '*/node_modules/*'))
if [[ -n $unformatted ]]; then
	echo "gofmt would change:"
	echo "$unformatted"
	exit 1
fi

step "go vet"
go vet ./...

step "staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

step "go test -race"
go test -race -count=1 -timeout 20m ./...

step "fuzz (each target briefly; longer: go test -fuzz=FuzzX -fuzztime=10m ./kez)"
for target in $(go test -list '^Fuzz' ./kez | grep '^Fuzz'); do
	go test -run='^$' -fuzz="^${target}\$" -fuzztime="${FUZZTIME:-3s}" ./kez >/dev/null || {
		echo "fuzz target $target failed; the failing input is in kez/testdata/fuzz/$target"
		exit 1
	}
	echo "ok  $target"
done

if [[ $what == all ]]; then
	step "web client"
	bash web/test/run.sh
fi
echo
echo "all checks passed"
