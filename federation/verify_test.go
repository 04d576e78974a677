package federation_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/federation"
	"github.com/kezchat/kez/handlers"
	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage/bolt"
)

// remote is another server: the real API on a real bbolt file.
func remote(t *testing.T, name string) *httptest.Server {
	t.Helper()
	store, err := bolt.Open(filepath.Join(t.TempDir(), "remote.db"), bolt.Options{Server: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var api *handlers.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { api.ServeHTTP(w, r) }))
	api = handlers.New(handlers.Config{Server: name, PublicURL: srv.URL}, store, hub.New(), nil)
	t.Cleanup(srv.Close)
	return srv
}

func registerAt(t *testing.T, base, server, handle string) ed25519.PrivateKey {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	reg, err := kez.SignRegistration(key, handle, server, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(reg)
	resp, err := http.Post(base+"/v1/register", "application/json", strings.NewReader(string(body)))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("register %s: %v %v", handle, resp, err)
	}
	resp.Body.Close()
	return key
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func codeOf(err error) string {
	var ke *kez.Error
	if errors.As(err, &ke) {
		return ke.Code
	}
	return ""
}

// A verified binding is trusted for the cache's time: the sender's server
// may go down meanwhile. After that, and for any other key, it is asked
// again, and its being down is sender_unverifiable (try later), never a
// verdict.
func TestVerifierCachesVerifiedBindings(t *testing.T) {
	one := remote(t, "one.test")
	alice := registerAt(t, one.URL, "one.test", "alice")
	local, err := bolt.Open(filepath.Join(t.TempDir(), "local.db"), bolt.Options{Server: "two.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	clk := &clock{now: time.Now()}
	v := federation.New(federation.Config{Server: "two.test", Resolve: map[string]string{"one.test": one.URL},
		CacheTTL: time.Minute, Logs: local, Now: clk.Now})
	ctx := context.Background()
	primary := kez.FormatPrimary(alice.Public().(ed25519.PublicKey))
	if err := v.VerifySender(ctx, "alice", "one.test", primary); err != nil {
		t.Fatal(err)
	}
	rl, err := local.RemoteLog(ctx, "one.test")
	if err != nil || !strings.HasPrefix(rl.Key, "one.test/kez-log+") || !strings.HasPrefix(rl.Checkpoint, "one.test/kez-log\n1\n") {
		t.Fatalf("kept about one.test: %+v, %v", rl, err)
	}
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	if err := v.VerifySender(ctx, "alice", "one.test", kez.FormatPrimary(other)); codeOf(err) != kez.CodeSenderUnverified {
		t.Fatalf("another key for alice: %v", err)
	}
	one.Close()
	if err := v.VerifySender(ctx, "alice", "one.test", primary); err != nil {
		t.Fatalf("within the cache time, with one.test down: %v", err)
	}
	if err := v.VerifySender(ctx, "bob", "one.test", primary); codeOf(err) != kez.CodeSenderUnverifiable {
		t.Fatalf("an address never verified, one.test down: %v", err)
	}
	clk.add(2 * time.Minute)
	if err := v.VerifySender(ctx, "alice", "one.test", primary); codeOf(err) != kez.CodeSenderUnverifiable {
		t.Fatalf("after the cache time, one.test down: %v", err)
	}
}

// The first contact pins the log key; a server that then serves another
// key (a new log) is refused, since every checkpoint must verify under the
// pinned one.
func TestVerifierKeepsThePinnedLogKey(t *testing.T) {
	one := remote(t, "one.test")
	registerAt(t, one.URL, "one.test", "carol")
	local, err := bolt.Open(filepath.Join(t.TempDir(), "local.db"), bolt.Options{Server: "two.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	ctx := context.Background()
	resolve := map[string]string{"one.test": one.URL}
	v := federation.New(federation.Config{Server: "two.test", Resolve: resolve, Logs: local})
	// carol's binding pins one.test's log key.
	resp, _ := http.Get(one.URL + "/v1/u/carol")
	var rec struct{ Primary string }
	_ = json.NewDecoder(resp.Body).Decode(&rec)
	resp.Body.Close()
	if err := v.VerifySender(ctx, "carol", "one.test", rec.Primary); err != nil {
		t.Fatal(err)
	}
	// one.test starts over with a new database and so a new log key.
	fresh := remote(t, "one.test")
	alice := registerAt(t, fresh.URL, "one.test", "alice")
	resolve["one.test"] = fresh.URL
	v = federation.New(federation.Config{Server: "two.test", Resolve: resolve, Logs: local})
	err = v.VerifySender(ctx, "alice", "one.test", kez.FormatPrimary(alice.Public().(ed25519.PublicKey)))
	if codeOf(err) != kez.CodeSenderUnverified || !strings.Contains(err.Error(), "not signed by the pinned log key") {
		t.Fatalf("a new log key: %v", err)
	}
}
