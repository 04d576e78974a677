// Package clienttest runs a KEZ chat server for the tests of the client
// library and the kez command: the real handlers, hub and bolt storage,
// in-process on loopback.
package clienttest

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/handlers"
	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/storage/bolt"
)

// Name is the server name in the addresses of a test server.
const Name = "kez.test"

// Server is a running test server.
type Server struct {
	URL  string // base URL, e.g. http://127.0.0.1:41234
	Name string // the name in addresses

	cfg     handlers.Config
	store   *bolt.Store
	hub     *hub.Hub
	current atomic.Pointer[handlers.Handler]
}

// Start runs a server until the test ends. mutate, if not nil, adjusts the
// configuration (say a small MaxEnvelope).
func Start(t testing.TB, mutate func(*handlers.Config)) *Server {
	t.Helper()
	hb := hub.New()
	store, err := bolt.Open(filepath.Join(t.TempDir(), "chat.db"), bolt.Options{Timeout: time.Second, Notify: handlers.HubNotifier(hb)})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Name: Name, cfg: handlers.Config{Server: Name, Keepalive: time.Second}, store: store, hub: hb}
	if mutate != nil {
		mutate(&s.cfg)
	}
	s.current.Store(handlers.New(s.cfg, store, hb, nil))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.current.Load().ServeHTTP(w, r)
	}))
	s.URL = srv.URL
	t.Cleanup(func() {
		s.current.Load().Close()
		srv.CloseClientConnections()
		srv.Close()
		hb.Close()
		_ = store.Close()
	})
	return s
}

// Reload does what a Caddy config reload does to the module: a new handler
// on the same storage and hub takes new requests, and the old one ends its
// open streams.
func (s *Server) Reload() {
	old := s.current.Swap(handlers.New(s.cfg, s.store, s.hub, nil))
	old.Close()
}
