package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
)

// checkExactlyOnce asserts that got is exactly want, in order: no gap, no duplicate.
func checkExactlyOnce(t *testing.T, got, want []uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("received %d messages, sent %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("message %d: seq %d, want %d (gap or duplicate)", i, got[i], want[i])
		}
	}
}

func TestStreamErrorsAndHeaders(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	alice, bob := newUser("alice"), newUser("bob")
	want(t, "register", register(t, srv, alice), 201, "")
	want(t, "no auth", do(t, "GET", srv.URL+"/v1/inbox/alice/stream", ""), 400, "missing_auth")
	want(t, "bad auth", do(t, "GET", srv.URL+"/v1/inbox/alice/stream?auth=123:abc", ""), 401, "unauthorized")
	if _, r := tryStream(t, srv.URL, user{"alice", bob.key}, -1); r.status != 401 || r.code() != "unauthorized" {
		t.Fatalf("bob's key on alice's stream: %d %s", r.status, r.body)
	}
	if _, r := tryStream(t, srv.URL, user{"carol", bob.key}, -1); r.status != 404 {
		t.Fatalf("unknown handle: %d %s", r.status, r.body)
	}
	// An inbox signature replayed as a stream signature.
	now := time.Now().Unix()
	inboxAuth := sign(t, srv.URL, alice, "GET", "/v1/inbox/alice", "", "", now)
	want(t, "inbox signature on stream", do(t, "GET", srv.URL+"/v1/inbox/alice/stream?auth="+inboxAuth, ""), 401, "unauthorized")
	// ?auth= (for EventSource) works, once: a leaked stream URL is worth one stream.
	streamURL := srv.URL + "/v1/inbox/alice/stream?auth=" + sign(t, srv.URL, alice, "GET", "/v1/inbox/alice/stream", "", "",
		freshTS(t, srv.URL, alice, "GET", "/v1/inbox/alice/stream", ""))
	first, err := http.Get(streamURL)
	if err != nil || first.StatusCode != 200 {
		t.Fatalf("stream with ?auth=: %v %v", first, err)
	}
	first.Body.Close()
	want(t, "the same stream URL again", do(t, "GET", streamURL, ""), 401, "unauthorized")

	s := openStream(t, srv, alice, -1)
	h := s.res.Header
	if h.Get("Content-Type") != "text/event-stream" || h.Get("Cache-Control") != "no-cache" || h.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("headers %v", h)
	}
	select {
	case ev := <-s.events:
		if ev.event != "retry" || ev.data != "3000" {
			t.Fatalf("first event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no retry line")
	}
}

// Live delivery and resume by since and by Last-Event-ID while messages are
// being sent: every stream sees every message exactly once, in order.
func TestStreamResumeWhileSending(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "keepalive 1s"})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")

	const total = 300
	var mu sync.Mutex
	var sent []uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			seq := send(t, srv, "alice", fmt.Sprintf(`{"i":%d}`, i))
			mu.Lock()
			sent = append(sent, seq)
			mu.Unlock()
			if i%50 == 0 {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()

	// Stream 1 reads 100 messages, disconnects, resumes with ?since; stream 2
	// does the same with Last-Event-ID (honoured only without a signed since).
	type resumer func(last uint64) *stream
	byQuery := func(last uint64) *stream { return openStream(t, srv, alice, int64(last)) }
	byHeader := func(last uint64) *stream {
		return openStream(t, srv, alice, -1, "Last-Event-ID", fmt.Sprint(last))
	}
	var wg sync.WaitGroup
	results := make([][]uint64, 2)
	for i, resume := range []resumer{byQuery, byHeader} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := openStream(t, srv, alice, 0)
			var got []uint64
			for len(got) < total {
				m, ok := s.nextMessage(t, 20*time.Second)
				if !ok {
					t.Errorf("stream ended early")
					return
				}
				got = append(got, m.Seq)
				if len(got)%100 == 0 && len(got) < total {
					s.close()
					s = resume(got[len(got)-1])
				}
			}
			results[i] = got
		}()
	}
	wg.Wait()
	<-done
	for _, got := range results {
		checkExactlyOnce(t, got, sent)
	}
}

// Several streams for one handle (several devices) all receive.
func TestTwoDevices(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	phone, laptop := openStream(t, srv, alice, -1), openStream(t, srv, alice, -1)
	time.Sleep(100 * time.Millisecond)
	seq := send(t, srv, "alice", `{"hello":"both"}`)
	for _, s := range []*stream{phone, laptop} {
		m, ok := s.nextMessage(t, 5*time.Second)
		if !ok || m.Seq != seq || !strings.HasSuffix(string(m.Envelope), `,"hello":"both"}`) {
			t.Fatalf("got %+v %v", m, ok)
		}
	}
}

// A subscriber that cannot keep up is disconnected, not silently skipped:
// what it got is a gap-free prefix, and a resume delivers the rest.
func TestOverflowDisconnects(t *testing.T) {
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "max_envelope 256KiB"})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")

	req, _ := http.NewRequest("GET", srv.URL+"/v1/inbox/alice/stream", nil)
	req.Header.Set("X-KEZ-Auth", sign(t, srv.URL, alice, "GET", "/v1/inbox/alice/stream", "", "", time.Now().Unix()))
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("stream: %v", err)
	}
	defer res.Body.Close()
	// Don't read: big envelopes fill the socket buffers, the handler blocks,
	// and the hub's 64-slot buffer overflows.
	big := `{"ct":"` + strings.Repeat("A", 200<<10) + `"}`
	var sent []uint64
	for range 150 {
		sent = append(sent, send(t, srv, "alice", big))
	}
	s := &stream{res: res, cancel: func() {}, events: make(chan sseEvent, 1000)}
	go s.read()
	var got []uint64
	for {
		m, ok := s.nextMessage(t, 30*time.Second)
		if !ok {
			break
		}
		got = append(got, m.Seq)
	}
	if len(got) >= len(sent) {
		t.Fatalf("stream delivered all %d messages: it never overflowed", len(got))
	}
	checkExactlyOnce(t, got, sent[:len(got)])
	resumed := openStream(t, srv, alice, int64(got[len(got)-1]))
	for len(got) < len(sent) {
		m, ok := resumed.nextMessage(t, 10*time.Second)
		if !ok {
			t.Fatal("resumed stream ended")
		}
		got = append(got, m.Seq)
	}
	checkExactlyOnce(t, got, sent)
}

// Behind encode and next to a catch-all reverse_proxy: the API still answers
// and stream headers go out at once.
func TestBehindEncodeWithCatchAllProxy(t *testing.T) {
	t.Parallel()
	dead := testcaddy.FreePort(t)
	srv := testcaddy.Start(t, testcaddy.Options{SiteExtra: fmt.Sprintf("encode zstd gzip\n\treverse_proxy 127.0.0.1:%d", dead)})
	alice := newUser("alice")
	want(t, "register through encode", register(t, srv, alice), 201, "")
	if r := do(t, "GET", srv.URL+"/somewhere/else", ""); r.status != 502 {
		t.Fatalf("non-API path: %d, want the proxy's 502", r.status)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/v1/inbox/alice/stream", nil)
	req.Header.Set("X-KEZ-Auth", sign(t, srv.URL, alice, "GET", "/v1/inbox/alice/stream", "", "", time.Now().Unix()))
	req.Header.Set("Accept-Encoding", "gzip")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req = req.WithContext(ctx)
	start := time.Now()
	res, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
	if err != nil {
		t.Fatalf("stream headers did not arrive: %v", err)
	}
	defer res.Body.Close()
	if d := time.Since(start); d > 3*time.Second || res.StatusCode != 200 {
		t.Fatalf("stream: %d after %s", res.StatusCode, d)
	}
	buf := make([]byte, 1)
	if _, err := res.Body.Read(buf); err != nil {
		t.Fatalf("no first byte: %v", err)
	}
}
