package main

import (
	"strings"
	"testing"

	"github.com/kezchat/kez/kez"
)

// TestTerminalMonitorAndFork: a server that binds bob's handle to another
// key behind his back is reported at bob's next command, and kept until
// dismissed; a server that rewrites its log is a fork, named at every
// command until kez log reset.
func TestTerminalMonitorAndFork(t *testing.T) {
	bob := kez.GenerateKeys()
	f := newFakeServer(t, bob)
	cfg := bobAt(t, f)
	if r := kezRun(t, "", cfg, "inbox"); r.code != 0 || r.stderr != "" {
		t.Fatalf("first inbox = %+v", r)
	}
	f.register("bob", kez.GenerateKeys()) // logged, not bob's key, no deletion
	r := kezRun(t, "", cfg, "inbox")
	if r.code != 1 || !strings.Contains(r.stderr, "kez: warning: log entry 1 binds your handle bob to key") ||
		!strings.Contains(r.stderr, "kez: warning: the server binds your handle bob to key") {
		t.Fatalf("inbox after the rebinding = %+v", r)
	}
	if r := kezRun(t, "", cfg, "contacts"); !strings.Contains(r.stderr, "log entry 1 binds your handle bob") {
		t.Errorf("the warning is not kept: %+v", r)
	}
	if r := kezRun(t, "", cfg, "log", "status"); r.code != 0 || !strings.Contains(r.stdout, "warning     log entry 1 binds your handle bob") {
		t.Errorf("log status = %+v", r)
	}
	kezRun(t, "", cfg, "log", "dismiss")

	// The log rewritten from entry 1 on: same size, another root.
	f.Truncate(1)
	f.register("carol", kez.GenerateKeys())
	for _, args := range [][]string{{"inbox"}, {"contacts"}} {
		r := kezRun(t, "", cfg, args...)
		if !strings.Contains(r.stderr, "kez: WARNING: the server showed two histories: checkpoint 2 (root") {
			t.Errorf("%v after the fork = %+v", args, r)
		}
	}
	if r := kezRun(t, "", cfg, "whois", "carol"); r.code != 1 || !strings.Contains(r.stderr, "two histories") {
		t.Errorf("whois after the fork = %+v", r)
	}
	if r := kezRun(t, "", cfg, "log", "status"); !strings.Contains(r.stdout, "FORK        the server showed two histories") {
		t.Errorf("log status after the fork = %+v", r)
	}
	if r := kezRun(t, "", cfg, "log", "reset"); r.code != 1 || !strings.Contains(r.stderr, "kez log reset --yes") {
		t.Errorf("log reset without --yes = %+v", r)
	}
	if r := kezRun(t, "", cfg, "log", "reset", "--yes"); r.code != 0 {
		t.Fatalf("log reset = %+v", r)
	}
	if r := kezRun(t, "", cfg, "whois", "carol"); r.code != 0 || strings.Contains(r.stderr, "two histories") {
		t.Errorf("whois after the reset = %+v", r)
	}
}
