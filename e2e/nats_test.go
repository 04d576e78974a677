package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/storage/nats/natstest"
)

// natsStorage is the storage line of a Caddy sharing the cluster c.
func natsStorage(c *natstest.Cluster) string {
	return "storage nats " + c.URLList() + " {\n\t\t\tstream e2e\n\t\t\ttimeout 10s\n\t\t}"
}

// Two Caddy processes on one NATS: a registration through one is seen by
// the other, and a stream held by instance 2 receives every message sent
// through either, in order; reconnecting to instance 1 with Last-Event-ID
// resumes with no gap and no duplicate.
func TestTwoInstancesShareNats(t *testing.T) {
	c := natstest.Run(t)
	opts := testcaddy.Options{Storage: natsStorage(c), KezOptions: "keepalive 1s"}
	srv1, srv2 := testcaddy.Start(t, opts), testcaddy.Start(t, opts)
	alice, bob, mallory := newUser("alice"), newUser("bob"), newUser("mallory")
	want(t, "register on 1", register(t, srv1, alice), 201, "")
	want(t, "lookup on 2", do(t, "GET", srv2.URL+"/v1/u/alice", ""), 200, "")
	want(t, "same handle on 2", register(t, srv2, user{"alice", bob.key}), 409, "handle_taken")

	// Both instances race for one handle: exactly one wins.
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i, srv := range []*testcaddy.Server{srv1, srv2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = register(t, srv, user{"contested", []any{bob, mallory}[i].(user).key}).status
		}()
	}
	wg.Wait()
	if !(codes[0] == 201 && codes[1] == 409 || codes[0] == 409 && codes[1] == 201) {
		t.Fatalf("racing registrations: %v", codes)
	}

	const total = 200
	var mu sync.Mutex
	var sent []uint64
	s := openStream(t, srv2, alice, -1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			srv := []*testcaddy.Server{srv1, srv2}[i%3/2] // two of three through instance 1
			seq := send(t, srv, "alice", fmt.Sprintf(`{"i":%d}`, i))
			mu.Lock()
			sent = append(sent, seq)
			mu.Unlock()
			if i%40 == 0 {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	var got []uint64
	for len(got) < total {
		m, ok := s.nextMessage(t, 20*time.Second)
		if !ok {
			t.Fatalf("stream on instance 2 ended after %d messages", len(got))
		}
		got = append(got, m.Seq)
		if len(got) == total/2 {
			// The client reconnects, through the load balancer, to the other instance.
			s.close()
			s = openStream(t, srv1, alice, -1, "Last-Event-ID", fmt.Sprint(got[len(got)-1]))
		}
	}
	<-done
	mu.Lock()
	defer mu.Unlock()
	checkExactlyOnce(t, got, sent)
	if all := allInbox(t, srv2, alice); len(all) != total {
		t.Fatalf("inbox through instance 2 holds %d", len(all))
	}
}

// NATS goes away: streams end promptly, every request is answered 503 at
// once (nothing hangs); NATS comes back: both instances serve again and a
// client resumes with Last-Event-ID, missing nothing sent meanwhile.
func TestNatsOutageEndsStreamsAndResumes(t *testing.T) {
	c := natstest.Run(t)
	opts := testcaddy.Options{Storage: natsStorage(c)}
	srv1, srv2 := testcaddy.Start(t, opts), testcaddy.Start(t, opts)
	alice := newUser("alice")
	want(t, "register", register(t, srv1, alice), 201, "")
	s := openStream(t, srv2, alice, -1)
	first := send(t, srv1, "alice", `{"before":true}`)
	if m, ok := s.nextMessage(t, 10*time.Second); !ok || m.Seq != first {
		t.Fatalf("before the outage: %+v %v", m, ok)
	}

	from, alicePrimary := contactOf(t, srv1.URL, "alice")
	c.Stop(0)
	s.waitEnd(t, 5*time.Second)
	start := time.Now()
	for _, srv := range []*testcaddy.Server{srv1, srv2} {
		want(t, "healthz during the outage", do(t, "GET", srv.URL+"/v1/healthz", ""), 503, "")
		want(t, "send during the outage", doRequest(t, sendRequest(t, srv.URL, from, "alice", alicePrimary, `{}`)), 503, "unavailable")
		if _, r := tryStream(t, srv.URL, alice, -1); r.status != 503 {
			t.Fatalf("stream during the outage: %d %s", r.status, r.body)
		}
	}
	// Unreachable NATS is answered at once, not after the 10 s timeout.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("six requests during the outage took %s", d)
	}

	c.Restart(t, 0)
	for _, srv := range []*testcaddy.Server{srv1, srv2} {
		waitHealthy(t, srv, 15*time.Second)
	}
	var sent []uint64
	for i := range 5 {
		sent = append(sent, send(t, []*testcaddy.Server{srv1, srv2}[i%2], "alice", fmt.Sprintf(`{"after":%d}`, i)))
	}
	s = openStream(t, srv2, alice, -1, "Last-Event-ID", fmt.Sprint(first))
	checkExactlyOnce(t, s.seqs(t, len(sent), 10*time.Second), sent)
	// And live delivery works again across instances.
	live := send(t, srv1, "alice", `{"live":true}`)
	if m, ok := s.nextMessage(t, 10*time.Second); !ok || m.Seq != live {
		t.Fatalf("live after the outage: %+v %v", m, ok)
	}
}

func waitHealthy(t *testing.T, srv *testcaddy.Server, within time.Duration) {
	t.Helper()
	testwait.For(t, within, "/v1/healthz to answer 200", func() bool { return do(t, "GET", srv.URL+"/v1/healthz", "").status == http.StatusOK })
}

// seqs reads the seqs of the next n messages, failing if the stream ends.
func (s *stream) seqs(t *testing.T, n int, within time.Duration) []uint64 {
	t.Helper()
	var got []uint64
	for len(got) < n {
		m, ok := s.nextMessage(t, within)
		if !ok {
			t.Fatalf("stream ended after %d of %d messages", len(got), n)
		}
		got = append(got, m.Seq)
	}
	return got
}

// The configurations the README and BENCHMARKS.md tell people to use for
// several instances parse: the nats.conf with nats-server's own parser,
// the Caddyfiles with caddy adapt (and are formatted).
func TestNatsConfigsParse(t *testing.T) {
	section := readmeSection(t, "## Running several instances")
	root, err := testcaddy.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var confs, caddyfiles []string
	for i, block := range strings.Split(section, "```")[1:] {
		if i%2 == 1 {
			continue // text between blocks
		}
		lang, body, _ := strings.Cut(block, "\n")
		path := filepath.Join(dir, fmt.Sprintf("readme-%d", i))
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		switch lang {
		case "":
			confs = append(confs, path)
		case "caddyfile":
			caddyfiles = append(caddyfiles, path)
		}
	}
	if len(confs) != 1 || len(caddyfiles) != 2 {
		t.Fatalf("README section has %d nats.conf and %d Caddyfile blocks, want 1 and 2", len(confs), len(caddyfiles))
	}
	bench := filepath.Join(root, "cmd", "kezbench", "nats")
	for i := 1; i <= 3; i++ {
		confs = append(confs, filepath.Join(bench, fmt.Sprintf("nats-%d.conf", i)))
	}
	caddyfiles = append(caddyfiles, filepath.Join(bench, "Caddyfile.instance"), filepath.Join(bench, "Caddyfile.lb"))

	for _, path := range confs {
		opts, err := server.ProcessConfigFile(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !opts.JetStream || !opts.SyncAlways || opts.Cluster.Name == "" || len(opts.Routes) != 3 {
			t.Errorf("%s: jetstream %v, sync always %v, cluster %q, %d routes", path, opts.JetStream, opts.SyncAlways, opts.Cluster.Name, len(opts.Routes))
		}
	}
	t.Setenv("KEZ_PORT", "7491")
	t.Setenv("KEZ_ADMIN", "7417")
	for _, path := range caddyfiles {
		out, err := caddyCLI(t, "adapt", "--config", path, "--adapter", "caddyfile")
		if err != nil {
			t.Fatalf("%s does not adapt: %v\n%s", path, err, out)
		}
		if strings.Contains(out, `"kez_chat"`) && !strings.Contains(out, `"nats":{`) {
			t.Errorf("%s: kez_chat without nats storage:\n%s", path, out)
		}
		raw, _ := os.ReadFile(path)
		formatted, err := exec.Command(testcaddy.Binary(t), "fmt", path).Output()
		if err != nil || !bytes.Equal(formatted, raw) {
			t.Errorf("%s is not formatted (caddy fmt): %v", path, err)
		}
	}
}

// Over NATS the record of used signatures is shared: a request accepted by
// one instance is refused by the other, and the message-request limits
// hold across instances.
func TestNatsReplayAndLimitsAcrossInstances(t *testing.T) {
	c := natstest.Run(t)
	opts := testcaddy.Options{Storage: natsStorage(c), KezOptions: "request_limit 3"}
	srv1, srv2 := testcaddy.Start(t, opts), testcaddy.Start(t, opts)
	alice, mallory := newUser("alice"), newUser("mallory")
	want(t, "register alice", register(t, srv1, alice), 201, "")
	want(t, "register mallory", register(t, srv2, mallory), 201, "")
	serverName(t, srv2.URL)

	read := sign(t, srv1.URL, alice, "GET", "/v1/inbox/alice", "", "", time.Now().Unix())
	want(t, "read on 1", do(t, "GET", srv1.URL+"/v1/inbox/alice", "", "X-KEZ-Auth", read), 200, "")
	want(t, "replayed on 2", do(t, "GET", srv2.URL+"/v1/inbox/alice", "", "X-KEZ-Auth", read), 401, "unauthorized")

	// A stranger's requests through both instances: three in all.
	alicePrimary := alice.primary()
	stored := 0
	for i := range 8 {
		srv := []*testcaddy.Server{srv1, srv2}[i%2]
		r := doRequest(t, sendRequest(t, srv.URL, mallory, "alice", alicePrimary, `{}`))
		switch {
		case r.status == 201:
			stored++
		case r.status != 429 || r.code() != "request_limit":
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
	if stored != 3 {
		t.Fatalf("stored %d requests from one stranger across two instances, want 3", stored)
	}
}
