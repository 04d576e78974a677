// Package kez is the KEZ chat Caddy plugin: end-to-end-encrypted 1:1 chat served
// by the kez_chat HTTP handler. Importing this package registers the module, so
//
//	xcaddy build --with github.com/kezchat/kez
//
// produces a Caddy with chat built in. The code lives in the sub-packages:
// caddymodule (Caddy glue), handlers (net/http), kez (protocol), storage, hub.
package kez

import _ "github.com/kezchat/kez/caddymodule" // registers http.handlers.kez_chat
