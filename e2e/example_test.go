package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
)

// caddyCLI runs the built caddy with HOME and XDG dirs in a temp dir.
func caddyCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testcaddy.Binary(t), args...)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir+"/data", "XDG_CONFIG_HOME="+dir+"/config")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Caddyfile.example is what the README tells a newcomer to run: it must be
// formatted, valid, and its commented production block must adapt too.
func TestCaddyfileExample(t *testing.T) {
	t.Parallel()
	root, err := testcaddy.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	example := filepath.Join(root, "Caddyfile.example")
	if out, err := caddyCLI(t, "fmt", example); err != nil {
		t.Fatalf("Caddyfile.example is not formatted (caddy fmt --overwrite): %v\n%s", err, out)
	}
	if out, err := caddyCLI(t, "validate", "--config", example); err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}

	raw, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	// Uncomment the production block: lines "# <tab or space>..." after its heading.
	text := string(raw)
	i := strings.Index(text, "# chat.example.com {")
	if i < 0 {
		t.Fatal("no production block in Caddyfile.example")
	}
	prod := regexp.MustCompile(`(?m)^# ?`).ReplaceAllString(text[i:], "")
	uncommented := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(uncommented, []byte(text[:i]+prod), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := caddyCLI(t, "adapt", "--config", uncommented)
	if err != nil {
		t.Fatalf("production block does not adapt: %v\n%s", err, out)
	}
	for _, want := range []string{`"chat.example.com"`, `"handler":"kez_chat"`, `"path":"/var/lib/kez/chat.db"`, `"auth"`} {
		if !strings.Contains(out, want) {
			t.Errorf("adapted production config lacks %s", want)
		}
	}
}
