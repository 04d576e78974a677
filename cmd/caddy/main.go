// Command caddy is Caddy with its standard modules plus kez_chat, so the
// project runs with `go run ./cmd/caddy` and needs no xcaddy while developing.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules and ours.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/kezchat/kez"
)

func main() {
	caddycmd.Main()
}
