package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(App{})
}

// appID is the App's module ID.
const appID = "kez_chat"

// App is the Caddy app kez_chat, loaded by every kez_chat handler of a
// config (it needs no configuration of its own). It exists for its Start:
// Caddy starts the apps of a config it runs (`caddy run`, `caddy start`,
// a reload, a load through the admin API) and never those of a config it
// only validates (`caddy validate`, `caddy adapt --validate`). Its Start
// opens the bbolt files the handlers named, so a file locked by another
// process fails `caddy run` at once with the reason, while validation
// neither waits for the lock nor creates a missing file.
type App struct {
	// The bbolt backends of the config's handlers. Caddy provisions and
	// starts a config in one goroutine.
	backends []*backend
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appID,
		New: func() caddy.Module { return new(App) },
	}
}

func (a *App) add(b *backend) {
	a.backends = append(a.backends, b)
}

// Start opens every database of the config not open yet (a reload shares
// the ones already open).
func (a *App) Start() error {
	for _, b := range a.backends {
		if _, err := b.open(startOpenTimeout); err != nil {
			return fmt.Errorf("bolt storage: %w", err)
		}
	}
	return nil
}

// Stop does nothing: each handler's Cleanup releases its backend.
func (*App) Stop() error { return nil }

var _ caddy.App = (*App)(nil)
