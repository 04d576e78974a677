package caddymodule

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/storage/bolt"
)

// kezConfig is a Caddy config of one HTTP server whose routes are the given
// kez_chat handlers.
func kezConfig(t *testing.T, handlers ...map[string]any) []byte {
	t.Helper()
	var routes []any
	for _, h := range handlers {
		h["handler"] = "kez_chat"
		routes = append(routes, map[string]any{"handle": []any{h}})
	}
	raw, err := json.Marshal(map[string]any{
		"admin": map[string]any{"disabled": true},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"kez": map[string]any{
			"listen": []string{fmt.Sprintf("127.0.0.1:%d", testcaddy.FreePort(t))},
			"routes": routes,
		}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// validate is `caddy validate`: provision without starting.
func validate(raw []byte) error {
	var cfg *caddy.Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	return caddy.Validate(cfg)
}

func boltAt(server, path string) map[string]any {
	return map[string]any{"server": server, "storage": map[string]any{"bolt": map[string]any{"path": path}}}
}

// A database locked by another process fails `caddy run` within the lock
// wait, with the reason, while validation of the same config succeeds at
// once: a second Caddy on the same file used to start and answer 503.
func TestLockedDatabaseFailsRunNotValidate(t *testing.T) {
	isolateCaddy(t)
	path := filepath.Join(t.TempDir(), "chat.db")
	other, err := bolt.Open(path, bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	raw := kezConfig(t, boltAt("kez.test", path))

	start := time.Now()
	if err := validate(raw); err != nil {
		t.Fatalf("validate next to the lock holder: %v", err)
	}
	if d := time.Since(start); d > startOpenTimeout/2 {
		t.Errorf("validate took %s: it waited for the lock", d)
	}

	start = time.Now()
	err = caddy.Load(raw, true)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") || !strings.Contains(err.Error(), "another Caddy") {
		t.Fatalf("run with a locked database = %v", err)
	}
	if d := time.Since(start); d > 3*startOpenTimeout {
		t.Errorf("failing took %s", d)
	}
	if n, ok := backends.References(path); ok {
		t.Fatalf("the failed config still holds the backend (%d references)", n)
	}

	// Once the other process is gone, the same config runs.
	_ = other.Close()
	if err := caddy.Load(raw, true); err != nil {
		t.Fatal(err)
	}
	pooledDB(t, path)
}

// Validation creates neither the database nor its directory, whether the
// path is given or the default one in Caddy's data directory.
func TestValidateCreatesNoDatabase(t *testing.T) {
	isolateCaddy(t)
	dir := filepath.Join(t.TempDir(), "new")
	raw := kezConfig(t, boltAt("a.test", filepath.Join(dir, "chat.db")), map[string]any{"server": "b.test"})
	if err := validate(raw); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(caddy.AppDataDir(), "kez")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("validate made %s (%v)", p, err)
		}
	}
	// Running it does make them.
	if err := caddy.Load(raw, true); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(dir, "chat.db"), filepath.Join(caddy.AppDataDir(), "kez", "b.test", "chat.db")} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
}

// One file cannot serve two server names: not in one config (validation
// says so), not across a reload, and not across restarts (the name is in
// the file).
func TestOneDatabaseOneServerName(t *testing.T) {
	isolateCaddy(t)
	path := filepath.Join(t.TempDir(), "chat.db")
	two := kezConfig(t, boltAt("one.test", path), boltAt("two.test", path))
	for name, err := range map[string]error{"validate": validate(two), "run": caddy.Load(two, true)} {
		if err == nil || !strings.Contains(err.Error(), "is the database of server one.test, so server two.test cannot use it") {
			t.Errorf("%s with two names on one file = %v", name, err)
		}
	}

	if err := caddy.Load(kezConfig(t, boltAt("one.test", path)), true); err != nil {
		t.Fatal(err)
	}
	err := caddy.Load(kezConfig(t, boltAt("two.test", path)), true)
	if err == nil || !strings.Contains(err.Error(), "is the database of server one.test") {
		t.Fatalf("reload to another name on the same file = %v", err)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(kezConfig(t, boltAt("two.test", path)), true)
	if err == nil || !strings.Contains(err.Error(), `holds the handles of "one.test", not "two.test"`) {
		t.Fatalf("restart as another name = %v", err)
	}
	if err := caddy.Load(kezConfig(t, boltAt("one.test", path)), true); err != nil {
		t.Fatalf("restart as the same name: %v", err)
	}
}

// A path that exists but is no file fails provisioning, so validation too.
func TestDirectoryAsDatabaseFailsValidate(t *testing.T) {
	isolateCaddy(t)
	err := validate(kezConfig(t, boltAt("kez.test", t.TempDir())))
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("validate with a directory as the file = %v", err)
	}
}
