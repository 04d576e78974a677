package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
)

// The attacks that protocol v2 answers, each against a real Caddy with the
// default limits (RELIABILITY.md has a row for each).

// fromIP is an HTTP client whose connections come from the loopback
// address ip (127.0.0.0/8 all reaches 127.0.0.1 on Linux), so a test can
// be many clients, as per-IP limits see them.
func fromIP(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

// A stranger flood from many addresses ends in 429 request_limit, and never
// fills the inbox that contacts write to (v1: 99 junk messages from 5 IPs
// made alice's real message get 507 inbox_full).
func TestAttackStrangerFloodEndsInRequestLimit(t *testing.T) {
	t.Parallel()
	// Per-IP and per-sender rates as shipped; a small inbox cap, so a v1
	// flood would fill it many times over.
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "send_rate 20/1s\nsender_rate 20/1s\nmax_inbox 10\nrequest_limit 3\nmax_requests 30"})
	carol, alice := newUser("carol"), newUser("alice")
	want(t, "register carol", register(t, srv, carol), 201, "")
	want(t, "register alice", register(t, srv, alice), 201, "")
	// alice is carol's contact: carol wrote to her first.
	want(t, "carol writes to alice", sendAs(t, srv.URL, carol, "alice", `{"hi":1}`), 201, "")

	var strangers []user
	for i := range 12 {
		u := newUser(fmt.Sprintf("junk%02d", i))
		want(t, "register a stranger", register(t, srv, u), 201, "")
		strangers = append(strangers, u)
	}
	carolPrimary := carol.primary()
	counts := map[string]int{} // by status and code
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, u := range strangers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := fromIP(fmt.Sprintf("127.0.0.%d", 10+i%5)) // five addresses
			for range 10 {
				res, err := c.Do(sendRequest(t, srv.URL, u, "carol", carolPrimary, `{"junk":true}`))
				if err != nil {
					t.Errorf("junk send: %v", err)
					return
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				mu.Lock()
				counts[fmt.Sprint(res.StatusCode, " ", result{body: body}.code())]++
				mu.Unlock()
				if res.StatusCode == 429 && res.Header.Get("Retry-After") == "" {
					t.Error("429 without Retry-After")
				}
			}
		}()
	}
	wg.Wait()
	// 12 strangers × 3 requests would be 36, but the inbox takes 30; the
	// rest is refused, by request_limit (or the per-address rate).
	t.Logf("stranger sends by status: %v", counts)
	if counts["201 "] != 30 || counts["429 request_limit"] == 0 || counts["201 "]+counts["429 request_limit"]+counts["429 rate_limited"] != 120 {
		t.Fatalf("stranger sends by status: %v (want 30 stored, 90 refused with 429)", counts)
	}
	// alice, a contact, still gets through: the whole max_inbox of 10 is
	// hers, then 507. The flood took none of it.
	for i := range 10 {
		want(t, fmt.Sprintf("alice's message %d", i), sendAs(t, srv.URL, alice, "carol", `{"real":true}`), 201, "")
	}
	want(t, "carol's own cap", sendAs(t, srv.URL, alice, "carol", `{}`), 507, "inbox_full")
	requests := 0
	for _, m := range allInbox(t, srv, carol) {
		if m.Request {
			requests++
		} else if m.From != alice.primary() || m.FromAddr != "alice@"+testcaddy.ServerName {
			t.Fatalf("an ordinary message not from alice: %+v", m)
		}
	}
	if requests != 30 {
		t.Fatalf("carol holds %d requests, want 30", requests)
	}
	// Blocking one stranger deletes its requests and refuses it.
	junk := strangers[0]
	want(t, "block", signed(t, srv.URL, carol, "PUT", "/v1/inbox/carol/blocked/"+junk.primary(), ""), 204, "")
	want(t, "blocked sender", sendAs(t, srv.URL, junk, "carol", `{}`), 403, "blocked")
	for _, m := range allInbox(t, srv, carol) {
		if m.From == junk.primary() {
			t.Fatal("a blocked sender's request is still stored")
		}
	}
}

// A signature is used once: a captured request replayed within its minute
// is refused, for reads, acknowledgements and streams.
func TestAttackReplayedSignature(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	seq := send(t, srv, "alice", `{}`)
	send(t, srv, "alice", `{}`)
	now := time.Now().Unix()
	read := sign(t, srv.URL, alice, "GET", "/v1/inbox/alice", "", "", now)
	want(t, "read", do(t, "GET", srv.URL+"/v1/inbox/alice", "", "X-KEZ-Auth", read), 200, "")
	r := do(t, "GET", srv.URL+"/v1/inbox/alice", "", "X-KEZ-Auth", read)
	want(t, "read replayed", r, 401, "unauthorized")
	if !strings.Contains(string(r.body), "already used") {
		t.Fatalf("the refusal does not say why: %s", r.body)
	}
	upto := fmt.Sprintf("upto=%d", seq)
	ack := sign(t, srv.URL, alice, "DELETE", "/v1/inbox/alice", upto, "", now)
	want(t, "ack", do(t, "DELETE", srv.URL+"/v1/inbox/alice?"+upto, "", "X-KEZ-Auth", ack), 200, "")
	want(t, "ack replayed", do(t, "DELETE", srv.URL+"/v1/inbox/alice?"+upto, "", "X-KEZ-Auth", ack), 401, "unauthorized")
	// A leaked stream credential opens one stream, not sixteen.
	stream := sign(t, srv.URL, alice, "GET", "/v1/inbox/alice/stream", "", "", now)
	for i := range 3 {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/inbox/alice/stream", nil)
		req.Header.Set("X-KEZ-Auth", stream)
		ctx, cancel := context.WithCancel(context.Background())
		res, err := http.DefaultClient.Do(req.WithContext(ctx))
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if (i == 0) != (res.StatusCode == 200) {
			t.Fatalf("stream %d with one credential: %d", i, res.StatusCode)
		}
		res.Body.Close()
		cancel()
	}
	// The same request signed again a second later is fine: clients sign
	// every attempt afresh.
	time.Sleep(time.Until(time.Unix(now+1, 0)))
	want(t, "read signed afresh", signed(t, srv.URL, alice, "GET", "/v1/inbox/alice", ""), 200, "")
}

// A stream ends by itself after stream_max_age: one credential is worth
// one stream for a bounded time.
func TestAttackStreamLivesBoundedTime(t *testing.T) {
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "stream_max_age 2s"})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	start := time.Now()
	s := openStream(t, srv, alice, -1)
	s.waitEnd(t, 10*time.Second)
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("the stream ended after %s, before its age of 2s ±10%%", d)
	}
}

// A signature made for one server is void on every other, even where the
// same key holds the same handle (v1: alice's DELETE ?upto=1000 captured on
// a second server deleted her unread messages on the first).
func TestAttackCrossServerReplay(t *testing.T) {
	t.Parallel()
	one := testcaddy.Start(t, testcaddy.Options{ServerName: "one.test"})
	two := testcaddy.Start(t, testcaddy.Options{ServerName: "two.test"})
	alice := newUser("alice")
	want(t, "register on one", register(t, one, alice), 201, "")
	want(t, "register on two", register(t, two, alice), 201, "")
	send(t, one, "alice", `{"unread":true}`)
	// alice acknowledges on two; the request is captured and sent to one.
	ack := sign(t, two.URL, alice, "DELETE", "/v1/inbox/alice", "upto=1000", "", time.Now().Unix())
	want(t, "ack on two", do(t, "DELETE", two.URL+"/v1/inbox/alice?upto=1000", "", "X-KEZ-Auth", ack), 200, "")
	want(t, "replayed on one", do(t, "DELETE", one.URL+"/v1/inbox/alice?upto=1000", "", "X-KEZ-Auth", ack), 401, "unauthorized")
	if msgs := allInbox(t, one, alice); len(msgs) != 1 {
		t.Fatalf("alice's unread messages on one: %d, want 1", len(msgs))
	}
}

// One envelope, two readings: an envelope whose member names differ only
// by case is refused, so no client can read one text where another reads
// a different one (the clients refuse it too: kez and web tests).
func TestAttackCaseVariantEnvelope(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	sender, alicePrimary := contactOf(t, srv.URL, "alice")
	for _, fields := range []string{
		`{"ct":"I owe you nothing","CT":"I owe you $100"}`,
		`{"nonce":"a","Nonce":"b"}`,
		`{"ſig":"x"}`, // Unicode folding, as Go's encoding/json does it, makes this "sig"
	} {
		body := `{"to":"alice","envelope":` + sealFor(sender, alicePrimary, fields) + `}`
		want(t, "case variant "+fields, signed(t, srv.URL, sender, "POST", "/v1/messages", body), 400, "bad_request")
	}
	// Exact names outside the envelope too.
	body := `{"To":"alice","envelope":` + sealFor(sender, alicePrimary, `{}`) + `}`
	want(t, "To", signed(t, srv.URL, sender, "POST", "/v1/messages", body), 400, "bad_request")
	if msgs := allInbox(t, srv, alice); len(msgs) != 0 {
		t.Fatalf("stored %d case-variant envelopes", len(msgs))
	}
}

// Exact resends: the same envelope sent again (a lost answer) is answered
// with its original receipt, also after it was acknowledged; an old
// message is not replayed as new.
func TestAttackResendIsIdempotent(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	sender, alicePrimary := contactOf(t, srv.URL, "alice")
	body := `{"to":"alice","envelope":` + sealFor(sender, alicePrimary, `{"n":1}`) + `}`
	first := signed(t, srv.URL, sender, "POST", "/v1/messages", body)
	want(t, "send", first, 201, "")
	again := signed(t, srv.URL, sender, "POST", "/v1/messages", body)
	want(t, "resend", again, 200, "")
	if string(again.body) != string(first.body) {
		t.Fatalf("resend receipt %s, first %s", again.body, first.body)
	}
	want(t, "ack", signed(t, srv.URL, alice, "DELETE", "/v1/inbox/alice?upto=1000", ""), 200, "")
	late := signed(t, srv.URL, sender, "POST", "/v1/messages", body)
	want(t, "resend after the ack", late, 200, "")
	if string(late.body) != string(first.body) || len(allInbox(t, srv, alice)) != 0 {
		t.Fatalf("a replayed message came back: %s", late.body)
	}
}

// A body that trickles in is cut off after body_timeout with 408, and
// bodies that announce a large Content-Length take no memory before their
// bytes arrive (v1: 400 trickling connections took the heap from 12 to
// 116 MiB).
func TestAttackTricklingBodies(t *testing.T) {
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "body_timeout 2s"})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	sender := defaultSender(t, srv.URL)
	auth := sign(t, srv.URL, sender, "POST", "/v1/messages", "", "{}", time.Now().Unix())
	before := rss(t, srv.Pid())

	const conns = 400
	var open []net.Conn
	for range conns {
		c, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		fmt.Fprintf(c, "POST /v1/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nX-KEZ-Auth: %s\r\nContent-Length: 262000\r\n\r\n{\"to\":",
			strings.TrimPrefix(srv.URL, "http://"), auth)
	}
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	time.Sleep(500 * time.Millisecond)
	during := rss(t, srv.Pid())
	t.Logf("RSS with %d trickling bodies: %d KiB before, %d KiB during (%+d KiB, %d B per connection)",
		conns, before>>10, during>>10, (during-before)>>10, (during-before)/conns)
	// 262 KB announced per connection would be ~100 MiB if reserved.
	if during-before > 40<<20 {
		t.Fatalf("memory grew by %d MiB for %d bodies that sent 6 bytes each", (during-before)>>20, conns)
	}
	// The first connection gets 408 once body_timeout has passed.
	c := open[0]
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 408") || !strings.Contains(string(buf[:n]), "body_timeout") {
		t.Fatalf("trickling body answered %q, %v", buf[:n], err)
	}
}

// rss is the resident memory of process pid, in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
