package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
)

// scaleCaddyfile is Caddyfile.scale on free ports.
func scaleCaddyfile(t *testing.T) (path string, port, admin int) {
	raw, err := os.ReadFile("Caddyfile.scale")
	if err != nil {
		t.Fatal(err)
	}
	port, admin = testcaddy.FreePort(t), testcaddy.FreePort(t)
	conf := strings.ReplaceAll(string(raw), "127.0.0.1:7480", "127.0.0.1:"+strconv.Itoa(port))
	conf = strings.ReplaceAll(conf, "127.0.0.1:7419", "127.0.0.1:"+strconv.Itoa(admin))
	path = filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, port, admin
}

// TestSmokeScale runs scenario 5 at a tiny scale against servers the tool
// starts itself: every curve gets its points, every stream point delivers
// exactly once, a point beyond the open-file limit is skipped and said so,
// and the charts are SVG files. It asserts nothing about speed.
func TestSmokeScale(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy processes")
	}
	caddyfile, port, admin := scaleCaddyfile(t)
	cfg := DefaultConfig()
	cfg.Run = []int{5}
	cfg.URL, cfg.Admin = "http://127.0.0.1:"+strconv.Itoa(port), "127.0.0.1:"+strconv.Itoa(admin)
	cfg.Caddy, cfg.Caddyfile, cfg.ScaleDir = testcaddy.Binary(t), caddyfile, t.TempDir()
	cfg.Senders, cfg.Settle = 4, 10*time.Millisecond
	cfg.ScaleStreams, cfg.ScaleHandles, cfg.ScaleInbox = []int{6, 20, 2000}, []int{10, 30}, []int{150, 400}
	cfg.ScaleDuration, cfg.ScaleMaxMessages, cfg.ScaleSamples = 30*time.Second, 40, 20
	cfg.FileLimit = 1000 + 100 // 2,000 streams do not fit: skipped
	cfg.DrainTimeout, cfg.OpenTimeout, cfg.Timeout = 20*time.Second, 30*time.Second, 3*time.Minute

	rep := runOK(t, cfg)
	s := rep.Scale
	if len(s.Streams) != 2 || s.Streams[0].Streams != 6 || s.Streams[1].Streams != 20 {
		t.Fatalf("streams curve: %+v", s.Streams)
	}
	for _, p := range s.Streams {
		if !p.OK || p.Accepted != 40 || p.RSSKiB == 0 || p.ToolCPUus <= 0 {
			t.Errorf("streams point %d: ok %v, %d accepted (want 40), RSS %d, tool CPU %.0f µs/msg", p.Streams, p.OK, p.Accepted, p.RSSKiB, p.ToolCPUus)
		}
	}
	if len(s.Notes) != 1 || !strings.Contains(s.Notes[0], "2000 streams skipped") {
		t.Errorf("the point beyond the file limit is not reported as skipped: %q", s.Notes)
	}
	if len(s.Lookups) != 2 || s.Lookups[1].Handles != 30 || s.Lookups[1].Latency.N != 20 {
		t.Errorf("lookup curve: %+v", s.Lookups)
	}
	if len(s.Inbox) != 2 || s.Inbox[0].Messages != 150 || s.Inbox[1].Messages != 400 || s.Inbox[1].PageLatency.N != 20 || s.Inbox[1].DBBytes == 0 {
		t.Errorf("inbox curve: %+v", s.Inbox)
	}
	// The users server once at the end, the inbox server empty and at each point.
	if len(s.Startup) != 4 {
		t.Errorf("startup points: %+v", s.Startup)
	}
	for _, p := range s.Startup {
		if p.StartupMs <= 0 || p.RSSKiB == 0 || p.AnonKiB == 0 || p.AnonKiB > p.RSSKiB || p.DBBytes == 0 {
			t.Errorf("startup point %q: %+v", p.Database, p)
		}
	}

	dir := t.TempDir()
	paths, err := writeCharts(dir, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 8 {
		t.Errorf("%d charts, want 8: %v", len(paths), paths)
	}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(raw, []byte("<svg")) || !bytes.Contains(raw, []byte("Scenario 5")) {
			t.Errorf("%s is not a titled SVG chart: %.80s", p, raw)
		}
	}
}

// Caddyfile.scale adapts and is formatted.
func TestCaddyfileScale(t *testing.T) {
	bin := testcaddy.Binary(t)
	out, err := exec.Command(bin, "adapt", "--config", "Caddyfile.scale", "--adapter", "caddyfile").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy adapt: %v\n%s", err, out)
	}
	for _, want := range []string{`"listen":["127.0.0.1:7480"]`, `"listen":"127.0.0.1:7419"`, `"max_inbox":2000000`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapted config lacks %s:\n%s", want, out)
		}
	}
	formatted, err := exec.Command(bin, "fmt", "Caddyfile.scale").Output()
	if err != nil {
		t.Fatal(err)
	}
	if orig, _ := os.ReadFile("Caddyfile.scale"); !bytes.Equal(formatted, orig) {
		t.Errorf("Caddyfile.scale is not formatted (caddy fmt --overwrite)")
	}
}

// procCPU reads a process's CPU time from /proc, as getrusage counts it:
// after this test spends 200 ms of CPU, both moved by about as much.
func TestProcCPU(t *testing.T) {
	before, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	self := selfCPU()
	for start := time.Now(); selfCPU()-self < 200*time.Millisecond && time.Since(start) < time.Minute; {
	}
	spent := selfCPU() - self
	after, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < spent/2 || d > 2*spent+5*clockTick {
		t.Errorf("/proc counted %s of CPU while getrusage counted %s", d, spent)
	}
	if _, err := procCPU(1 << 30); err == nil {
		t.Error("no error for a process that does not exist")
	}
}
