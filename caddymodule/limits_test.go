package caddymodule

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/kezchat/kez/internal/testcaddy"
)

func postRegister(t *testing.T, base string) int {
	t.Helper()
	res, err := http.Post(base+"/v1/register", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// `caddy reload` keeps each client's rate-limit buckets: a client that used
// up register_rate is still refused after a reload, even one that raises
// the rate; the state goes when the last config is stopped.
func TestReloadKeepsRateLimits(t *testing.T) {
	isolateCaddy(t)
	port := testcaddy.FreePort(t)
	storage := map[string]any{"bolt": map[string]any{"path": filepath.Join(t.TempDir(), "chat.db")}}
	base := runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage, "register_rate": "2/1h"})
	for i := range 2 { // failed attempts count too
		if code := postRegister(t, base); code != 400 {
			t.Fatalf("attempt %d: %d, want 400", i+1, code)
		}
	}
	if code := postRegister(t, base); code != 429 {
		t.Fatalf("third attempt: %d, want 429", code)
	}
	runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage, "register_rate": "2/1h", "max_inbox": 5})
	if code := postRegister(t, base); code != 429 {
		t.Fatalf("after a reload: %d, want 429 (the reload refilled the bucket)", code)
	}
	runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage, "register_rate": "5/1h"})
	if code := postRegister(t, base); code != 429 {
		t.Fatalf("after a reload raising the rate: %d, want 429", code)
	}
	if n, ok := rateStates.References("kez.test"); !ok || n != 1 {
		t.Fatalf("after reloads, rate state references %d %v", n, ok)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, ok := rateStates.References("kez.test"); ok {
		t.Fatal("the rate state outlives the last config")
	}
}
