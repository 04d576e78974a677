// Package testcaddy runs a real Caddy, built from ./cmd/caddy, on loopback for
// end-to-end tests.
//
//	func TestMain(m *testing.M) { testcaddy.Main(m) }
//
//	func TestX(t *testing.T) {
//		srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "max_inbox 5"})
//		resp, _ := http.Get(srv.URL + "/v1/healthz")
//		...
//		srv.Reload(t, testcaddy.Options{...}) // `caddy reload`, same data
//		srv.Stop(t)                            // `caddy stop`
//	}
//
// The binary is built once per test process; each server gets its own temp
// directory (data, config, HOME) and free loopback ports for HTTP and admin.
package testcaddy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ServerName is the kez_chat server name used unless Options says otherwise.
const ServerName = "kez.test"

var (
	buildOnce sync.Once
	buildDir  string
	buildPath string
	buildErr  error
)

// Main runs the tests and removes the built binary afterwards.
func Main(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// ModuleRoot is the directory holding go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the module")
	}
	return filepath.Dir(gomod), nil
}

// Build compiles a Go command of this module (e.g. "./cmd/kez") into a temp
// directory shared by the test process and returns its path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	buildOnce.Do(func() { buildDir, buildErr = os.MkdirTemp("", "kez-e2e-bin-") })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	buildMu.Lock()
	defer buildMu.Unlock()
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

var buildMu sync.Mutex

// binaryMu guards buildPath: parallel tests may ask for the binary first at once.
var binaryMu sync.Mutex

// Binary is the path of the Caddy built from ./cmd/caddy.
func Binary(t testing.TB) string {
	t.Helper()
	binaryMu.Lock()
	defer binaryMu.Unlock()
	if buildPath == "" {
		buildPath = Build(t, "./cmd/caddy")
	}
	return buildPath
}

// Options shape the Caddyfile.
type Options struct {
	ServerName string // kez_chat server; default ServerName
	KezOptions string // extra lines inside the kez_chat block
	BoltBlock  string // lines of a block after "storage bolt <path>" (e.g. one_commit_per_message)
	Storage    string // replaces the whole storage line when set, e.g. "storage nats nats://127.0.0.1:4222"
	SiteExtra  string // extra lines in the site block (encode, reverse_proxy, log ...)
	Global     string // extra lines in the global options block
	// FileSizeLimit, when positive, caps every file the process writes
	// (RLIMIT_FSIZE, in KiB): a stand-in for a full disk.
	FileSizeLimitKiB int
	// Config, when set, renders the whole Caddyfile instead, for a test of
	// a config of its own (a README example): it must set the admin
	// address s.AdminAddr and serve /v1/healthz at s.URL.
	Config func(s *Server) string
}

// Server is one running Caddy.
type Server struct {
	URL       string // http://127.0.0.1:<port>
	Port      int
	AdminAddr string // 127.0.0.1:<port>
	Dir       string // everything this server writes
	DBPath    string
	Opts      Options

	bin  string
	cmd  *exec.Cmd
	logs *syncBuffer
	exit chan error
}

// FreePort returns a loopback port nobody listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// FreePorts returns n distinct loopback ports nobody listens on right now
// (each picked while the others are still held: two FreePort calls in a
// row can return the same port).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// Start runs Caddy with the kez_chat site on a free port and waits until
// /v1/healthz answers 200. The process is stopped when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	dir := t.TempDir()
	bin := Binary(t) // may build: before picking ports, so they stay free until Caddy binds them
	s := &Server{Dir: dir, DBPath: filepath.Join(dir, "data", "chat.db"), bin: bin, logs: &syncBuffer{}}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("caddy logs:\n%s", s.Logs())
		}
	})
	// A port picked here can still be taken (by a parallel test's
	// connection, say) before Caddy binds it: then start over on others.
	for attempt := 1; ; attempt++ {
		ports := FreePorts(t, 2) // distinct: the admin API on the site's port would answer its requests
		s.Port = ports[0]
		s.URL = fmt.Sprintf("http://127.0.0.1:%d", s.Port)
		s.AdminAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
		err := s.launch(t, opts)
		if err == nil {
			return s
		}
		if attempt == 3 || !strings.Contains(s.Logs(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("caddy: a port was taken, trying others: %v", err)
		s.logs = &syncBuffer{}
	}
}

// Caddyfile renders the configuration for opts.
func (s *Server) Caddyfile(opts Options) string {
	if opts.Config != nil {
		return opts.Config(s)
	}
	name := opts.ServerName
	if name == "" {
		name = ServerName
	}
	return fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
	filesystem kezweb kez_web
	%s
}

http://127.0.0.1:%d {
	kez_chat {
		server %s
		public_url %s
		%s
		%s
	}
	%s
	file_server {
		fs kezweb
	}
}
`, s.AdminAddr, opts.Global, s.Port, name, s.URL, storageLine(s.DBPath, opts), kezOptions(opts.KezOptions), opts.SiteExtra)
}

// kezOptions are the test's options plus the rate limits turned off where
// the test does not set them: tests send and register faster than one
// person, and limits are tested on their own. (kez_chat refuses an option
// given twice.)
func kezOptions(extra string) string {
	lines := []string{extra}
	for _, opt := range []string{"register_rate", "send_rate", "sender_rate"} {
		if !regexp.MustCompile(`(?m)^\s*` + opt + `\s`).MatchString(extra) {
			lines = append(lines, opt+" off")
		}
	}
	return strings.Join(lines, "\n\t\t")
}

func storageLine(dbPath string, opts Options) string {
	if opts.Storage != "" {
		return opts.Storage
	}
	return "storage bolt " + dbPath + boltBlock(opts.BoltBlock)
}

func boltBlock(lines string) string {
	if strings.TrimSpace(lines) == "" {
		return ""
	}
	return " {\n\t\t\t" + strings.TrimSpace(lines) + "\n\t\t}"
}

func (s *Server) writeConfig(t testing.TB, opts Options) string {
	t.Helper()
	s.Opts = opts
	path := filepath.Join(s.Dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(s.Caddyfile(opts)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Env is the environment Caddy and its CLI run with: everything under Dir.
func (s *Server) Env() []string {
	return append(os.Environ(),
		"HOME="+s.Dir,
		"XDG_DATA_HOME="+filepath.Join(s.Dir, "xdg-data"),
		"XDG_CONFIG_HOME="+filepath.Join(s.Dir, "xdg-config"),
	)
}

// Start (re)starts the process with opts, on the same port and data.
func (s *Server) Start(t testing.TB, opts Options) {
	t.Helper()
	if err := s.launch(t, opts); err != nil {
		t.Fatal(err)
	}
}

// launch starts the process and waits until it is healthy.
func (s *Server) launch(t testing.TB, opts Options) error {
	t.Helper()
	config := s.writeConfig(t, opts)
	s.cmd = exec.Command(s.bin, "run", "--config", config, "--adapter", "caddyfile")
	if opts.FileSizeLimitKiB > 0 {
		s.cmd = exec.Command("bash", "-c", fmt.Sprintf(`ulimit -f %d && exec "$0" "$@"`, opts.FileSizeLimitKiB),
			s.bin, "run", "--config", config, "--adapter", "caddyfile")
	}
	s.cmd.Env = s.Env()
	s.cmd.Stdout = s.logs
	s.cmd.Stderr = s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.exit = make(chan error, 1)
	go func(cmd *exec.Cmd, exit chan error) { exit <- cmd.Wait() }(s.cmd, s.exit)
	return s.waitHealthy(30 * time.Second)
}

// WaitHealthy polls /v1/healthz until it answers 200.
func (s *Server) WaitHealthy(t testing.TB, within time.Duration) {
	t.Helper()
	if err := s.waitHealthy(within); err != nil {
		t.Fatal(err)
	}
}

func (s *Server) waitHealthy(within time.Duration) error {
	deadline := time.Now().Add(within)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case err := <-s.exit:
			s.exit <- err
			return fmt.Errorf("caddy exited during start: %v\n%s", err, s.Logs())
		default:
		}
		res, err := client.Get(s.URL + "/v1/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy not healthy after %s (last error %v)\n%s", within, err, s.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CLI runs the caddy binary with args (e.g. "reload") against this server's
// admin endpoint and returns its combined output.
func (s *Server) CLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = s.Env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Reload applies opts with `caddy reload` while the server runs.
func (s *Server) Reload(t testing.TB, opts Options) {
	t.Helper()
	config := s.writeConfig(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := s.CLI(ctx, "reload", "--config", config, "--adapter", "caddyfile", "--address", s.AdminAddr); err != nil {
		t.Fatalf("caddy reload: %v\n%s\n%s", err, out, s.Logs())
	}
}

// Stop runs `caddy stop` and waits for the process to exit, returning how
// long that took; it fails the test if it takes longer than limit.
func (s *Server) Stop(t testing.TB, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if out, err := s.CLI(ctx, "stop", "--address", s.AdminAddr); err != nil {
		t.Fatalf("caddy stop: %v\n%s", err, out)
	}
	select {
	case err := <-s.exit:
		s.exit <- err
	case <-time.After(time.Until(start.Add(limit))):
		s.Kill()
		t.Fatalf("caddy still running %s after caddy stop\n%s", limit, s.Logs())
	}
	return time.Since(start)
}

// Kill ends the process with SIGKILL (a crash) and waits for it.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-s.exit:
		s.exit <- err
	case <-time.After(10 * time.Second):
	}
}

// Pid is the process id of the running Caddy (0 if none).
func (s *Server) Pid() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Logs is everything Caddy printed so far.
func (s *Server) Logs() string { return s.logs.String() }

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// StartFederation runs one Caddy per opts, each with its own ServerName,
// whose kez_chat blocks map every other server's name to its loopback URL
// (federation_resolve, SPEC §8): their users can write to each other as on
// the internet, without DNS or TLS. The returned servers' Opts carry those
// lines, so Stop and Start keep them.
func StartFederation(t testing.TB, opts ...Options) []*Server {
	t.Helper()
	servers := make([]*Server, len(opts))
	for i, o := range opts {
		if o.ServerName == "" {
			t.Fatalf("StartFederation: server %d has no ServerName", i)
		}
		servers[i] = Start(t, o) // its URL is known only now
	}
	for i, s := range servers {
		o := opts[i]
		for j, other := range servers {
			if j != i {
				o.KezOptions += fmt.Sprintf("\n\t\tfederation_resolve %s %s", opts[j].ServerName, other.URL)
			}
		}
		s.Reload(t, o)
	}
	return servers
}
