package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/internal/testwait"
)

// Self-hosting papercuts (issue 15, items 10-12), each with a real Caddy.

// The README's /chat/ config on a site with its own `root` serves the
// client at /chat/ and the site's files at /; without `root .` in the
// client's file_server the 404 comes with a warning that names the fix.
func TestReadmeChatPathUnderSiteRoot(t *testing.T) {
	t.Parallel()
	block := readmeSection(t, "### The web client under `/chat/` of an existing site")
	block = block[strings.Index(block, "```caddyfile\n")+len("```caddyfile\n"):]
	block = block[:strings.Index(block, "```")]
	for _, want := range []string{"\troot * /srv/www\n", "\t\t\troot .\n", "example.com {\n"} {
		if !strings.Contains(block, want) {
			t.Fatalf("the README's /chat/ config lacks %q:\n%s", want, block)
		}
	}

	www := filepath.Join(t.TempDir(), "www")
	if err := os.MkdirAll(www, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("the site's own page\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	config := func(block string) func(*testcaddy.Server) string {
		return func(s *testcaddy.Server) string {
			return strings.NewReplacer(
				"\tfilesystem kezweb kez_web\n", "\tadmin "+s.AdminAddr+"\n\tauto_https off\n\tpersist_config off\n\tfilesystem kezweb kez_web\n",
				"example.com {\n", s.URL+" {\n",
				"/srv/www", www,
			).Replace(block)
		}
	}
	srv := testcaddy.Start(t, testcaddy.Options{Config: config(block)})
	base := srv.URL

	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string) (int, string, http.Header) {
		t.Helper()
		res, err := noRedirect.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body), res.Header
	}
	if code, body, _ := get("/chat/"); code != 200 || !strings.Contains(body, "<title>KEZ chat</title>") {
		t.Fatalf("/chat/ under a site root: %d %.200q", code, body)
	}
	for _, path := range []string{"/chat/app.css", "/chat/icon.svg", "/v1/healthz"} {
		if code, body, _ := get(path); code != 200 {
			t.Errorf("%s: %d %.200q", path, code, body)
		}
	}
	if code, _, h := get("/chat"); code/100 != 3 || h.Get("Location") != "/chat/" {
		t.Errorf("/chat: %d, Location %q", code, h.Get("Location"))
	}
	if code, body, _ := get("/"); code != 200 || body != "the site's own page\n" {
		t.Errorf("the site's own files: %d %q", code, body)
	}
	if strings.Contains(srv.Logs(), "kez_web: file_server looked") {
		t.Errorf("a warning with root . in place:\n%s", srv.Logs())
	}

	// The mistake the README warns about: the same config without root .
	srv.Reload(t, testcaddy.Options{Config: config(strings.Replace(block, "\t\t\troot .\n", "", 1))})
	if code, _, _ := get("/chat/"); code != 404 {
		t.Fatalf("/chat/ without root .: %d", code)
	}
	const warning = "kez_web: file_server looked for the web client's files under the site's root"
	testwait.For(t, 5*time.Second, "a warning for a /chat/ hidden by the site root", func() bool { return strings.Contains(srv.Logs(), warning) })
	if !strings.Contains(srv.Logs(), "Add `root .` inside that file_server block") {
		t.Errorf("the warning does not name the fix:\n%s", srv.Logs())
	}
}

// A second `caddy run` with the same config exits at once, saying the
// database is locked by another process (it used to start and answer some
// of the requests, those the kernel gave it, with 503); the first server
// keeps answering every request.
func TestSecondCaddyRunOnTheSameDatabaseFails(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	out, took, err := runToExit(t, srv.Env(), "run", "--config", filepath.Join(srv.Dir, "Caddyfile"), "--adapter", "caddyfile")
	t.Logf("the second caddy run exited after %s", took)
	if err == nil {
		t.Fatalf("a second caddy run on the same database exited successfully:\n%s", out)
	}
	for _, want := range []string{"database file is locked by another process", "is another Caddy running with this database?", srv.DBPath} {
		if !strings.Contains(out, want) {
			t.Errorf("the second caddy run's output lacks %q:\n%s", want, out)
		}
	}
	if took > 15*time.Second {
		t.Errorf("failing took %s", took)
	}
	for i := range 20 {
		if r := do(t, "GET", srv.URL+"/v1/healthz", ""); r.status != 200 {
			t.Fatalf("request %d to the first server: %d %s", i, r.status, r.body)
		}
	}
}

// `caddy validate` creates neither a missing database nor its directory,
// at a given path or at the default one.
func TestValidateCreatesNoDatabase(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := &testcaddy.Server{Dir: dir, DBPath: filepath.Join(dir, "new", "chat.db"), Port: testcaddy.FreePort(t)}
	s.AdminAddr = fmt.Sprintf("127.0.0.1:%d", testcaddy.FreePort(t))
	s.URL = fmt.Sprintf("http://127.0.0.1:%d", s.Port)
	for _, opts := range []testcaddy.Options{{}, {Storage: "# the default database"}} {
		config := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(config, []byte(s.Caddyfile(opts)), 0o600); err != nil {
			t.Fatal(err)
		}
		out, _, err := runToExit(t, s.Env(), "validate", "--config", config, "--adapter", "caddyfile")
		if err != nil || !strings.Contains(out, "Valid configuration") {
			t.Fatalf("caddy validate: %v\n%s", err, out)
		}
	}
	for _, p := range []string{filepath.Dir(s.DBPath), filepath.Join(dir, "xdg-data", "caddy", "kez")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("caddy validate made %s (%v)", p, err)
		}
	}
}

// One bolt file holds the handles of one server name: a restart under
// another name is refused, and so is a config with two names on one file;
// the data stays as it was.
func TestOneDatabaseFileOneServerName(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	srv.Stop(t, 10*time.Second)

	other := filepath.Join(srv.Dir, "Caddyfile.two")
	if err := os.WriteFile(other, []byte(srv.Caddyfile(testcaddy.Options{ServerName: "two.test"})), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := runToExit(t, srv.Env(), "run", "--config", other, "--adapter", "caddyfile")
	// (Caddy logs the error as JSON, quotes escaped.)
	if err == nil || !strings.Contains(out, `it holds the handles of \"kez.test\", not \"two.test\"`) {
		t.Fatalf("caddy run as two.test on kez.test's file: %v\n%s", err, out)
	}

	both := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
}
http://127.0.0.1:%d {
	kez_chat {
		server kez.test
		storage bolt %s
	}
}
http://127.0.0.1:%d {
	kez_chat {
		server two.test
		storage bolt %[2]s
	}
}
`, testcaddy.FreePort(t), srv.DBPath, testcaddy.FreePort(t))
	if err := os.WriteFile(other, []byte(both), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err = runToExit(t, srv.Env(), "validate", "--config", other, "--adapter", "caddyfile")
	// (Either site may be provisioned first.)
	if err == nil || !strings.Contains(out, "is the database of server") || !strings.Contains(out, "cannot use it too") {
		t.Fatalf("caddy validate with two names on one file: %v\n%s", err, out)
	}

	srv.Start(t, srv.Opts)
	if got := lookupPrimary(t, srv.URL, "alice"); got != alice.primary() {
		t.Fatalf("alice after the refused starts: %q, want %q", got, alice.primary())
	}
}

// runToExit runs the caddy binary with args until it exits (at most 30 s)
// and returns its combined output, how long it ran and its error.
func runToExit(t *testing.T, env []string, args ...string) (string, time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testcaddy.Binary(t), args...)
	cmd.Env = env
	start := time.Now()
	out, err := cmd.CombinedOutput()
	return string(out), time.Since(start), err
}
