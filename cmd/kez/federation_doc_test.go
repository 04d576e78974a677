package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
)

// docBlocks are the fenced blocks of lang in the README's part that
// begins with heading, up to the next heading of its level or above.
func docBlocks(t *testing.T, heading, lang string) []string {
	t.Helper()
	text := testcaddy.ReadmeSection(t, heading)
	var out []string
	for _, m := range regexp.MustCompile("(?s)```"+lang+"\n(.*?)```").FindAllStringSubmatch(text, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestDocFederationKez: the README's kez part of "Talk to other servers" works as written, with the
// two servers of examples/federation (only ports and HOME differ): alice on one and bob on
// two chat both ways, and a message to two while it is down is queued and
// delivered once when it is back.
func TestDocFederationKez(t *testing.T) {
	const doc = "### From the terminal: `kez`"
	var caddyfiles []string
	for _, name := range []string{"one", "two"} {
		data, err := os.ReadFile("../../examples/federation/" + name + ".Caddyfile")
		if err != nil {
			t.Fatal(err)
		}
		caddyfiles = append(caddyfiles, string(data))
	}
	kezDir := filepath.Dir(testcaddy.Build(t, "./cmd/kez"))
	home := t.TempDir()
	// Each server's Caddyfile as written, on the ports of this test.
	ports := map[string]string{"8081": "1", "8082": "1"} // the doc's port → this test's
	config := func(i int) func(s *testcaddy.Server) string {
		own := []string{"8081", "8082"}[i]
		return func(s *testcaddy.Server) string {
			ports[own] = strings.TrimPrefix(s.URL, "http://127.0.0.1:")
			c := regexp.MustCompile(`admin localhost:\d+`).ReplaceAllString(caddyfiles[i], "admin "+s.AdminAddr)
			for doc, port := range ports {
				c = strings.ReplaceAll(c, "127.0.0.1:"+doc, "127.0.0.1:"+port)
			}
			return c
		}
	}
	one := testcaddy.Start(t, testcaddy.Options{Config: config(0)})
	two := testcaddy.Start(t, testcaddy.Options{Config: config(1)})
	one.Reload(t, testcaddy.Options{Config: config(0)}) // now that two's port is known
	two.Reload(t, testcaddy.Options{Config: config(1)})

	var exports []string
	var all strings.Builder
	for _, block := range docBlocks(t, doc, "sh") {
		if strings.Contains(block, "go run ./cmd/caddy") {
			continue // the servers run already
		}
		switch {
		case strings.Contains(block, `"are you there?"`):
			two.Stop(t, 30*time.Second) // "Now stop server two"
		case strings.Contains(block, "outbox --retry"):
			two.Start(t, two.Opts) // "Start server two again"
		}
		for doc, port := range ports {
			block = strings.ReplaceAll(block, "127.0.0.1:"+doc, "127.0.0.1:"+port)
		}
		script := "set -e\nexport PATH=" + kezDir + ":$PATH HOME=" + home + "\n" + strings.Join(exports, "\n") + "\n" + block
		cmd := exec.Command("bash", "-c", script)
		cmd.Env = append(os.Environ(), "KEZ_CONFIG_DIR=", "KEZ_RESOLVE=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("block failed: %v\n%s\n--- output:\n%s", err, block, out)
		}
		all.Write(out)
		for _, line := range strings.Split(block, "\n") {
			if strings.HasPrefix(line, "export ") {
				exports = append(exports, line)
			}
		}
	}
	got := all.String()
	for _, want := range []string{
		"registered alice@one.localhost", "registered bob@two.localhost",
		"address     bob@two.localhost",
		"sent to bob@two.localhost",
		"message requests: 1", " alice@one.localhost: hi bob, alice from one",
		"accepted alice@one.localhost",
		" bob@two.localhost: hello alice, bob from two",
		"safety number of you (alice@one.localhost) and bob@two.localhost",
		"remote      two.localhost: log key two.localhost/kez-log+",
		"queued for bob@two.localhost: ",
		"to bob@two.localhost, queued ", "waiting, 1 attempt(s)",
		"outbox: delivered your message to bob@two.localhost",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the doc's commands did not print %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "alice@one.localhost: are you there?"); n != 1 {
		t.Errorf("the queued message is shown %d times:\n%s", n, got)
	}
}
