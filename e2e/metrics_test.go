package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
)

// Caddy's admin endpoint serves the module's Prometheus metrics.
func TestMetrics(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "send_rate 2/1h"})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	s := openStream(t, srv, alice, -1)
	send(t, srv, "alice", `{"x":"12345"}`)
	send(t, srv, "alice", `{}`)
	want(t, "limited", sendAs(t, srv.URL, defaultSender(t, srv.URL), "alice", `{}`), 429, "rate_limited")
	s.nextMessage(t, 5*time.Second)
	envelopeBytes := 0
	for _, m := range allInbox(t, srv, alice) {
		envelopeBytes += len(m.Envelope)
	}
	r := do(t, "GET", "http://"+srv.AdminAddr+"/metrics", "")
	if r.status != 200 {
		t.Fatalf("metrics: %d", r.status)
	}
	for _, line := range []string{
		"caddy_kez_chat_messages_accepted_total 2",
		fmt.Sprintf("caddy_kez_chat_envelope_bytes_total %d", envelopeBytes),
		"caddy_kez_chat_registrations_total 2", // alice and the test sender
		"caddy_kez_chat_streams_open 1",
		`caddy_kez_chat_rate_limited_total{limit="send"} 1`,
	} {
		if !strings.Contains(string(r.body), "\n"+line+"\n") {
			t.Errorf("metrics lack %q", line)
		}
	}
}
