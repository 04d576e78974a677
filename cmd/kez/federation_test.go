package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/kez"
)

// Federation in the terminal (SPEC §8) against fakes: bob is on the fake
// server kez.test, others on fakes of their own.

func TestResolveFlagAndEnv(t *testing.T) {
	got, err := resolveMap(" two.example=http://127.0.0.1:8081/ ,Three.Example=https://three.example/kez", resolveFlag{"two.example=http://127.0.0.1:9"})
	if err != nil || len(got) != 2 || got["two.example"] != "http://127.0.0.1:9" || got["three.example"] != "https://three.example/kez" {
		t.Errorf("resolveMap = %v, %v; flags win over the environment", got, err)
	}
	for _, bad := range []string{"two.example", "=http://x", "two.example=ftp://x", "two/x=http://x", "a@b=http://x"} {
		if _, err := resolveMap(bad, nil); err == nil {
			t.Errorf("KEZ_RESOLVE=%q accepted", bad)
		}
	}
	dir := t.TempDir()
	if r := kezRun(t, "", map[string]string{"KEZ_CONFIG_DIR": dir}, "--resolve", "nonsense", "outbox"); r.code != 2 {
		t.Errorf("--resolve nonsense = %+v", r)
	}
	if r := kezRun(t, "", map[string]string{"KEZ_CONFIG_DIR": dir, "KEZ_RESOLVE": "x"}, "outbox"); r.code != 1 || !strings.Contains(r.stderr, "SERVER=URL") {
		t.Errorf("KEZ_RESOLVE=x = %+v", r)
	}
	if r := kezRun(t, "", map[string]string{"KEZ_CONFIG_DIR": dir}, "outbox", "--resolve", "two.example=http://127.0.0.1:1"); r.code != 0 || !strings.Contains(r.stdout, "outbox is empty") {
		t.Errorf("outbox = %+v", r)
	}
}

// addFrom stores a message object for bob that names the sender's address.
func (f *fakeServer) addFrom(from, fromAddr string, envelope []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	seq := len(f.messages) + 1
	f.messages = append(f.messages, fmt.Sprintf(`{"seq":%d,"from":%q,"from_addr":%q,"request":true,"envelope":%s,"received_at":%d}`,
		seq, from, fromAddr, envelope, time.Now().UnixMilli()))
}

// TestRemoteSendersVerifiedAtTheirServer: a message from another server's
// user is shown under that address only when that server binds the
// address to the key that signed it; otherwise it says what failed.
func TestRemoteSendersVerifiedAtTheirServer(t *testing.T) {
	bob, alice, mallory := kez.GenerateKeys(), kez.GenerateKeys(), kez.GenerateKeys()
	f := newFakeServer(t, bob)
	one := clienttest.NewFake(t, "one.example")
	one.Register(alice, "alice")
	f.addFrom(alice.Primary(), "alice@one.example", seal(t, alice, bob.Primary(), text("alice@one.example", "a1", "hello from one")))
	f.addFrom(mallory.Primary(), "alice@one.example", seal(t, mallory, bob.Primary(), text("alice@one.example", "m1", "it's me, alice")))
	f.addFrom(mallory.Primary(), "carol@three.example", seal(t, mallory, bob.Primary(), text("carol@three.example", "m2", "carol here")))
	f.addFrom(mallory.Primary(), "admin@127.0.0.1:22", seal(t, mallory, bob.Primary(), text("admin@127.0.0.1:22", "m3", "from inside")))
	env := bobAt(t, f)
	env["KEZ_RESOLVE"] = "one.example=" + one.URL + ",three.example=http://127.0.0.1:1"

	r := kezRun(t, "", env, "inbox")
	if r.code != 0 {
		t.Fatalf("inbox = %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 7 || lines[0] != "no messages" {
		t.Fatalf("inbox printed\n%s", r.stdout)
	}
	if !strings.HasSuffix(lines[3], " alice@one.example: hello from one") {
		t.Errorf("verified remote sender: %q", lines[3])
	}
	if l := lines[4]; strings.Contains(l, " alice@one.example:") || !strings.Contains(l, `(the server says "alice@one.example")`) ||
		!strings.Contains(l, "[NOT VERIFIED: alice@one.example is bound to key "+alice.Primary()[8:24]) {
		t.Errorf("forged remote sender: %q", l)
	}
	if l := lines[5]; strings.Contains(l, " carol@three.example:") || !strings.Contains(l, "[NOT VERIFIED: could not check carol@three.example at its server") {
		t.Errorf("unverifiable remote sender: %q", l)
	}
	// A from_addr naming a machine of bob's own network is not fetched.
	if l := lines[6]; !strings.Contains(l, `[NOT VERIFIED: could not check admin@127.0.0.1:22 at its server: "127.0.0.1:22" is not a public server name`) {
		t.Errorf("from_addr at a loopback address: %q", l)
	}
	// The remote sender's key is pinned under one.example, and the
	// requests list names them by full address.
	st, err := newFileTrust(env["KEZ_CONFIG_DIR"], f.url).Load()
	if err != nil || st.Remotes["one.example"] == nil || st.Remotes["one.example"].Contacts["alice"].Primary != alice.Primary() || st.Contacts["alice"] != nil {
		t.Fatalf("trust state: %+v, %v", st, err)
	}
	r = kezRun(t, "", env, "requests")
	if r.code != 0 || !strings.Contains(r.stdout, "alice@one.example: 1 request(s)") || !strings.Contains(r.stdout, "kez accept alice@one.example") {
		t.Errorf("requests = %+v", r)
	}
	r = kezRun(t, "", env, "accept", "alice@one.example")
	if r.code != 0 || r.stdout != "accepted alice@one.example: their messages are no longer requests\n" {
		t.Errorf("accept alice@one.example = %+v", r)
	}
	r = kezRun(t, "", env, "whois", "alice@one.example")
	if r.code != 0 || !strings.Contains(r.stdout, "address     alice@one.example") || !strings.Contains(r.stdout, "the log key pinned for one.example") ||
		!strings.Contains(r.stdout, "kez verify alice@one.example") {
		t.Errorf("whois alice@one.example = %+v", r)
	}
	r = kezRun(t, "", env, "log", "status")
	if r.code != 0 || !strings.Contains(r.stdout, "remote      one.example: log key "+one.LogKey) {
		t.Errorf("log status = %+v", r)
	}
	r = kezRun(t, "", env, "log", "status", "--remote", "one.example")
	if r.code != 0 || !strings.Contains(r.stdout, "server      one.example") || !strings.Contains(r.stdout, "contacts    1 pinned") {
		t.Errorf("log status --remote = %+v", r)
	}
}

// twoDown makes a fake answer as a server that is down (the connection
// closed unanswered), unwell (503) or refusing, by mode.
func twoDown(two *clienttest.Fake) *atomic.Value {
	var mode atomic.Value
	mode.Store("up")
	two.Intercept = func(w http.ResponseWriter, r *http.Request) bool {
		switch m := mode.Load().(string); {
		case m == "down":
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return true
		case m == "unverifiable" && r.URL.Path == "/v1/messages":
			w.WriteHeader(503)
			fmt.Fprint(w, `{"error":{"code":"sender_unverifiable","message":"cannot reach kez.test"}}`)
			return true
		case strings.HasPrefix(m, "4") && r.URL.Path == "/v1/messages":
			code, status := "federation_refused", 403
			if m == "400" {
				code, status = "bad_request", 400
			}
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"error":{"code":%q,"message":"no"}}`, code)
			return true
		}
		return false
	}
	return &mode
}

// setNextAt sets when every queued message is due.
func setNextAt(t *testing.T, dir string, at int64) {
	t.Helper()
	items := readOutbox(t, dir)
	for _, it := range items {
		it.NextAt = at
	}
	if err := os.WriteFile(filepath.Join(dir, outboxFile), encodeOutbox(&outboxJSON{Items: items}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readOutbox(t *testing.T, dir string) []*outboxItem {
	t.Helper()
	var ob outboxJSON
	data, err := os.ReadFile(filepath.Join(dir, outboxFile))
	if err != nil {
		return nil
	}
	if err := json.Unmarshal(data, &ob); err != nil {
		t.Fatal(err)
	}
	return ob.Items
}

// daveOnTwo is bob's fake server and dave on two.example, a fake whose
// state mode sets (twoDown).
func daveOnTwo(t *testing.T) (f *fakeServer, two *clienttest.Fake, dave *kez.Keys, mode *atomic.Value) {
	f = newFakeServer(t, kez.GenerateKeys())
	two = clienttest.NewFake(t, "two.example")
	dave = kez.GenerateKeys()
	two.Register(dave, "dave")
	return f, two, dave, twoDown(two)
}

// TestRemoteSendQueuedUntilDelivered: a message to another server that is
// down is kept in the outbox (on disk before kez returns), tried again with
// the same envelope and a new signature, delivered once when the server is
// back, and one refused for good is kept apart until dropped.
func TestRemoteSendQueuedUntilDelivered(t *testing.T) {
	f, two, dave, mode := daveOnTwo(t)
	env := bobAt(t, f)
	dir := env["KEZ_CONFIG_DIR"]
	resolve := []string{"--resolve", "two.example=" + two.URL}
	send := func(words ...string) result {
		return kezRun(t, "", env, append(append([]string{"send", "dave@two.example"}, words...), resolve...)...)
	}

	if r := send("hello"); r.code != 0 || r.stdout != "sent to dave@two.example\n" || !strings.Contains(r.stderr, "kez verify dave@two.example") {
		t.Fatalf("send = %+v", r)
	}
	inbox := two.Inbox("dave")
	if len(inbox) != 1 || !strings.Contains(inbox[0], `"from_addr":"bob@kez.test"`) {
		t.Fatalf("dave's inbox: %v", inbox)
	}
	f.mu.Lock()
	acts := strings.Join(f.acts, ";")
	f.mu.Unlock()
	if acts != "PUT contacts "+dave.Primary() {
		t.Errorf("bob's own server saw %q; want dave accepted there", acts)
	}

	// two.example is down: the message is sealed to the pinned key and queued.
	mode.Store("down")
	r := send("are", "you", "there?")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "queued for dave@two.example: ") {
		t.Fatalf("send while down = %+v", r)
	}
	items := readOutbox(t, dir)
	if len(items) != 1 || items[0].To != "dave@two.example" || items[0].Attempts != 1 || items[0].Failed {
		t.Fatalf("outbox: %+v", items)
	}
	envelope := string(items[0].Envelope)
	if r := kezRun(t, "", env, "outbox"); r.code != 0 || !strings.Contains(r.stdout, "to dave@two.example, queued ") || !strings.Contains(r.stdout, "waiting, 1 attempt(s)") {
		t.Errorf("outbox = %+v", r)
	}
	for _, m := range []string{"down", "unverifiable"} {
		mode.Store(m)
		r := kezRun(t, "", env, append([]string{"outbox", "--retry"}, resolve...)...)
		if r.code != 0 || !strings.Contains(r.stderr, "your message to dave@two.example is still waiting") {
			t.Errorf("retry while %s = %+v", m, r)
		}
	}
	if items := readOutbox(t, dir); len(items) != 1 || items[0].Attempts != 3 || string(items[0].Envelope) != envelope || !strings.Contains(items[0].LastError, "sender_unverifiable") {
		t.Fatalf("outbox after two failed retries: %+v", items)
	}
	if n := len(two.Inbox("dave")); n != 1 {
		t.Fatalf("failed attempts stored %d messages", n-1)
	}

	mode.Store("up")
	// Ordinary commands deliver what is due, and leave the rest waiting.
	setNextAt(t, dir, time.Now().Add(time.Hour).Unix())
	if r := kezRun(t, "", env, append([]string{"contacts"}, resolve...)...); r.code != 0 || strings.Contains(r.stderr, "outbox") || len(two.Inbox("dave")) != 1 {
		t.Fatalf("a message not due was tried: %+v", r)
	}
	setNextAt(t, dir, 0)
	r = kezRun(t, "", env, append([]string{"contacts"}, resolve...)...)
	if r.code != 0 || !strings.Contains(r.stderr, "outbox: delivered your message to dave@two.example") {
		t.Fatalf("contacts with a message due = %+v", r)
	}
	if r := kezRun(t, "", env, "outbox"); r.code != 0 || !strings.Contains(r.stdout, "outbox is empty") {
		t.Fatalf("outbox after delivery = %+v", r)
	}
	if r := kezRun(t, "", env, append([]string{"outbox", "--retry"}, resolve...)...); r.code != 0 || r.stderr != "" {
		t.Errorf("retry with nothing queued = %+v", r)
	}
	inbox = two.Inbox("dave")
	if len(inbox) != 2 || !strings.Contains(inbox[1], envelope) {
		t.Fatalf("dave's inbox after the retry: %d messages, the queued envelope delivered: %v", len(inbox), len(inbox) == 2 && strings.Contains(inbox[1], envelope))
	}

	// Refused for good: not queued.
	mode.Store("403")
	if r := send("hello?"); r.code != 1 || !strings.Contains(r.stderr, "two.example does not take messages from users of kez.test") || len(readOutbox(t, dir)) != 0 {
		t.Errorf("send refused = %+v", r)
	}
	// Queued, then refused: kept as failed, never sent again, until dropped.
	mode.Store("down")
	if r := send("one more"); r.code != 0 || !strings.HasPrefix(r.stdout, "queued for") {
		t.Fatalf("send while down = %+v", r)
	}
	mode.Store("400")
	if r := kezRun(t, "", env, append([]string{"outbox", "--retry"}, resolve...)...); !strings.Contains(r.stderr, "was refused and will not be sent again") || !strings.Contains(r.stdout, "REFUSED") {
		t.Errorf("retry refused = %+v", r)
	}
	mode.Store("up")
	if r := kezRun(t, "", env, append([]string{"outbox", "--retry"}, resolve...)...); r.stderr != "" || len(two.Inbox("dave")) != 2 {
		t.Errorf("a refused message was tried again: %+v", r)
	}
	if r := kezRun(t, "", env, "outbox", "--drop-failed"); r.code != 0 || !strings.Contains(r.stdout, "dropped the message to dave@two.example") || !strings.Contains(r.stdout, "outbox is empty") {
		t.Errorf("drop-failed = %+v", r)
	}

	// A first message to someone whose server is down has no key to be
	// sealed to: refused, nothing queued.
	two.Register(kez.GenerateKeys(), "erin")
	mode.Store("down")
	if r := kezRun(t, "", env, append([]string{"send", "erin@two.example", "hi"}, resolve...)...); r.code != 1 || !strings.Contains(r.stderr, "cannot reach") || len(readOutbox(t, dir)) != 0 {
		t.Errorf("first message while down = %+v", r)
	}
}

// TestListenDeliversQueued: while kez listen runs, the outbox is tried now
// and then, and what is due is delivered.
func TestListenDeliversQueued(t *testing.T) {
	f, two, _, mode := daveOnTwo(t)
	vars := bobAt(t, f)
	resolve := []string{"--resolve", "two.example=" + two.URL}
	kezRun(t, "", vars, append([]string{"send", "dave@two.example", "first"}, resolve...)...)
	mode.Store("down")
	if r := kezRun(t, "", vars, append([]string{"send", "dave@two.example", "later"}, resolve...)...); !strings.HasPrefix(r.stdout, "queued for") {
		t.Fatalf("send while down = %+v", r)
	}
	mode.Store("up")
	setNextAt(t, vars["KEZ_CONFIG_DIR"], 0)

	var stderr strings.Builder
	e := &env{app: &app{stdout: io.Discard, stderr: &stderr, getenv: func(string) string { return "" }},
		dir: vars["KEZ_CONFIG_DIR"], resolve: map[string]string{"two.example": two.URL}}
	c, _, err := e.accountClient()
	if err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { listenOutboxEvery = d }(listenOutboxEvery)
	listenOutboxEvery = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.watchOutbox(ctx, c); close(done) }()
	testwait.For(t, 10*time.Second, "the queued message delivered by listen's loop", func() bool { return len(two.Inbox("dave")) == 2 })
	cancel()
	<-done
	if items := readOutbox(t, vars["KEZ_CONFIG_DIR"]); len(items) != 0 || len(two.Inbox("dave")) != 2 {
		t.Errorf("after delivery: outbox %+v, dave has %d messages", items, len(two.Inbox("dave")))
	}
	if !strings.Contains(stderr.String(), "outbox: delivered your message to dave@two.example") {
		t.Errorf("listen said %q", stderr.String())
	}
}
