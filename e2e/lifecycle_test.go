package e2e

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/internal/testwait"
)

// `caddy reload` with a changed option while a stream is open: the stream
// ends promptly, the client resumes, no message is lost, data is still there,
// and the new option is in force.
func TestReloadDuringOpenStream(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "max_inbox 1000"})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	var sent []uint64
	for range 5 {
		sent = append(sent, send(t, srv, "alice", `{"before":"reload"}`))
	}
	s := openStream(t, srv, alice, 0)
	var got []uint64
	for range 5 {
		m, _ := s.nextMessage(t, 5*time.Second)
		got = append(got, m.Seq)
	}

	// Keep sending during the reload.
	var mu sync.Mutex
	stop := make(chan struct{})
	senderDone := make(chan struct{})
	from, alicePrimary := contactOf(t, srv.URL, "alice")
	go func() {
		defer close(senderDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			res, err := client.Do(sendRequest(t, srv.URL, from, "alice", alicePrimary, fmt.Sprintf(`{"during":%d}`, i)))
			if err != nil {
				// A keep-alive connection closed by the reload: the POST was
				// never read (see TestReloadsUnderLoad); send the next one.
				continue
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			r := result{status: res.StatusCode, body: body}
			if r.status == 201 {
				var seq uint64
				fmt.Sscanf(string(r.body), `{"seq":%d`, &seq)
				mu.Lock()
				sent = append(sent, seq)
				mu.Unlock()
			} else if r.status != 507 {
				t.Errorf("send during reload: %d %s", r.status, r.body)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	srv.Reload(t, testcaddy.Options{KezOptions: "max_inbox 60\nkeepalive 2s"})
	t.Logf("caddy reload took %s", time.Since(start))
	// The old stream ends on its own; read what it delivered until then.
	for {
		m, ok := s.nextMessage(t, 10*time.Second)
		if !ok {
			break
		}
		got = append(got, m.Seq)
	}
	t.Logf("old stream ended %s after the reload began", time.Since(start))
	time.Sleep(100 * time.Millisecond)
	close(stop)
	<-senderDone
	resumed := openStream(t, srv, alice, int64(got[len(got)-1]))
	mu.Lock()
	total := len(sent)
	mu.Unlock()
	for len(got) < total {
		m, ok := resumed.nextMessage(t, 10*time.Second)
		if !ok {
			t.Fatal("resumed stream ended")
		}
		got = append(got, m.Seq)
	}
	checkExactlyOnce(t, got, sent)
	if stored := allInbox(t, srv, alice); len(stored) != total {
		t.Fatalf("stored %d, sent %d", len(stored), total)
	}
	// The changed option is in force: max_inbox 60.
	for n := total; n < 60; n++ {
		send(t, srv, "alice", `{}`)
	}
	want(t, "new cap", sendAs(t, srv.URL, from, "alice", `{}`), 507, "inbox_full")
	if stored := allInbox(t, srv, alice); len(stored) != max(total, 60) {
		t.Fatalf("stored %d after filling to the cap of 60 (had %d)", len(stored), total)
	}
}

// `caddy stop` with streams open returns within a few seconds, although
// Caddy's default grace period is eternal.
func TestStopWithOpenStreams(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	var streams []*stream
	for i := range 10 {
		u := newUser(fmt.Sprintf("user%d", i))
		want(t, "register", register(t, srv, u), 201, "")
		for range 10 {
			streams = append(streams, openStream(t, srv, u, -1))
		}
		send(t, srv, u.handle, `{}`)
	}
	for _, s := range streams {
		if _, ok := s.nextMessage(t, 10*time.Second); !ok {
			t.Fatal("stream ended")
		}
	}
	took := srv.Stop(t, 10*time.Second)
	t.Logf("caddy stop with %d open streams took %s", len(streams), took)
	for _, s := range streams {
		s.waitEnd(t, 5*time.Second)
	}
}

// `caddy validate` next to the running server succeeds without touching the
// database it holds (no lock wait: the file is opened only by a config that
// starts), and a restart after SIGKILL finds every acknowledged message.
func TestValidateNextToRunningServerAndRestart(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	var sent []uint64
	for range 20 {
		sent = append(sent, send(t, srv, "alice", `{}`))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	out, err := srv.CLI(ctx, "validate", "--config", filepath.Join(srv.Dir, "Caddyfile"), "--adapter", "caddyfile")
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}
	if strings.Contains(out, "locked") || strings.Contains(out, "chat database open") {
		t.Fatalf("caddy validate opened the database:\n%s", out)
	}
	t.Logf("caddy validate next to a running server took %s", time.Since(start))
	if r := do(t, "GET", srv.URL+"/v1/healthz", ""); r.status != 200 {
		t.Fatalf("server unhealthy after validate: %d", r.status)
	}

	srv.Kill()
	srv.Start(t, srv.Opts)
	got := allInbox(t, srv, alice)
	var seqs []uint64
	for _, m := range got {
		seqs = append(seqs, m.Seq)
	}
	checkExactlyOnce(t, seqs, sent)
	if s := send(t, srv, "alice", `{}`); s <= sent[len(sent)-1] {
		t.Fatalf("seq %d reused after restart", s)
	}
}

// Neither our logs nor (with the README's filter) access logs contain auth
// values, signatures or envelopes.
func TestLogsCarryNoSecrets(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{
		Global: "debug",
		SiteExtra: `log {
		output stderr
		format filter {
			request>uri query {
				delete auth
			}
			request>headers>X-Kez-Auth delete
		}
	}`,
	})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	send(t, srv, "alice", `{"ct":"SECRET-CIPHERTEXT"}`)
	s := openStream(t, srv, alice, 0)
	s.nextMessage(t, 5*time.Second)
	inbox(t, srv, alice, 0, 10)
	s.close()
	// The stream's access-log line is written once Caddy sees it closed.
	testwait.For(t, 10*time.Second, "the stream's access-log line", func() bool { return strings.Contains(srv.Logs(), "/v1/inbox/alice/stream") })
	logs := srv.Logs()
	if strings.Contains(logs, "SECRET-CIPHERTEXT") {
		t.Fatal("logs contain an envelope")
	}
	// Every auth value carries a 128-hex-digit signature; none may appear.
	if sig := regexp.MustCompile(`[0-9a-f]{128}`).FindString(logs); sig != "" {
		t.Fatalf("logs contain a signature: %s", sig)
	}
	if !strings.Contains(logs, "/v1/inbox/alice/stream") {
		t.Fatal("access log missing: the test checks nothing")
	}
}
