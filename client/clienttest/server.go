// Package clienttest runs a real KEZ chat server for the tests of the client
// library and the kez command: Caddy built from ./cmd/caddy with the kez_chat
// module, on loopback (see internal/testcaddy). A test package using it needs
//
//	func TestMain(m *testing.M) { testcaddy.Main(m) }
package clienttest

import (
	"fmt"
	"os"
	"testing"

	"github.com/kezchat/kez/internal/testcaddy"
)

// Server is a running Caddy serving kez_chat.
type Server struct {
	URL  string // base URL, e.g. http://127.0.0.1:41234
	Name string // the server name in addresses

	caddy   *testcaddy.Server
	extra   string // kez_chat options the test asked for
	reloads int
}

// Start runs a server until the test ends. kezOptions are extra lines for
// the kez_chat block, e.g. "max_envelope 1KiB".
func Start(t testing.TB, kezOptions string) *Server {
	t.Helper()
	s := &Server{Name: testcaddy.ServerName, extra: kezOptions}
	s.caddy = testcaddy.Start(t, s.options())
	s.URL = s.caddy.URL
	return s
}

// options alternates the keepalive between reloads: Caddy ignores a reload
// whose configuration did not change.
func (s *Server) options() testcaddy.Options {
	return testcaddy.Options{KezOptions: fmt.Sprintf("keepalive %ds\n%s", 1+s.reloads%2, s.extra)}
}

// Reload runs `caddy reload` with a slightly different configuration, which
// ends every open stream while keeping the data.
func (s *Server) Reload(t testing.TB) {
	t.Helper()
	s.reloads++
	s.caddy.Reload(t, s.options())
}

// Crash kills the server process, as a crash or a power cut would.
func (s *Server) Crash() { s.caddy.Kill() }

// Restart starts the server again on the same port and data after Crash.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.caddy.Start(t, s.options())
}

// Reset kills the server, deletes its database and starts it empty on the
// same port, as an operator starting over would.
func (s *Server) Reset(t testing.TB) {
	t.Helper()
	s.caddy.Kill()
	if err := os.Remove(s.caddy.DBPath); err != nil {
		t.Fatal(err)
	}
	s.caddy.Start(t, s.options())
}

// DBPath is the server's bolt database file (stop or crash the server
// before touching it).
func (s *Server) DBPath() string { return s.caddy.DBPath }
