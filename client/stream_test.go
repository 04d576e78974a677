package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/kez"
)

// fakeStreams is an SSE endpoint scripted per connection; it checks each
// connection's auth and records the since it was asked for.
type fakeStreams struct {
	t       *testing.T
	keys    *kez.Keys
	scripts []func(w http.ResponseWriter, flush func())

	mu     sync.Mutex
	sinces []string
	auths  []string
}

func (f *fakeStreams) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/inbox/alice/stream" {
		http.NotFound(w, r)
		return
	}
	auth := r.Header.Get("X-KEZ-Auth")
	_, query, urlAuth, err := kez.ParseQuery(r.URL.RawQuery, true, "since")
	if err == nil && urlAuth != "" {
		err = errors.New("a credential in the URL")
	}
	if err == nil {
		req := kez.Request{Server: "kez.test", Method: "GET", Path: r.URL.Path, Query: query}
		_, _, err = req.Verify(f.keys.Private().Public().(ed25519.PublicKey), auth, time.Now(), time.Hour)
	}
	f.mu.Lock()
	n := len(f.sinces)
	f.sinces = append(f.sinces, r.URL.Query().Get("since"))
	f.auths = append(f.auths, auth)
	f.mu.Unlock()
	if err != nil {
		f.t.Errorf("connection %d: auth %q: %v", n, auth, err)
	}
	if n >= len(f.scripts) {
		<-r.Context().Done()
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	rc := http.NewResponseController(w)
	f.scripts[n](w, func() { _ = rc.Flush() })
}

func event(w http.ResponseWriter, seq int) {
	fmt.Fprintf(w, "id: %d\nevent: message\ndata: {\"seq\":%d,\"from\":\"ed25519:00\",\"request\":false,\"envelope\":{},\"received_at\":1}\n\n", seq, seq)
}

// tickingClock gives every call a later second, so each signature is fresh.
func tickingClock() func() time.Time {
	var n atomic.Int64
	start := time.Now().Add(-time.Minute)
	return func() time.Time { return start.Add(time.Duration(n.Add(1)) * time.Second) }
}

func streamClient(t *testing.T, h http.Handler, keys *kez.Keys) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, Options{Keys: keys, Handle: "Alice", ServerName: "kez.test", Now: tickingClock()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStreamResumesWithFreshAuth(t *testing.T) {
	keys := kez.GenerateKeys()
	f := &fakeStreams{t: t, keys: keys}
	f.scripts = []func(http.ResponseWriter, func()){
		func(w http.ResponseWriter, flush func()) { // ends after two messages, like a reload
			fmt.Fprint(w, "retry: 10\n\n")
			event(w, 3)
			event(w, 5)
			flush()
		},
		func(w http.ResponseWriter, flush func()) { // replays 5, then pings, then 9
			fmt.Fprint(w, ": ping\n\n")
			event(w, 5)
			fmt.Fprint(w, ": ping\n\n")
			event(w, 9)
			flush()
		},
	}
	c := streamClient(t, f, keys)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []uint64
	var connects, disconnects int
	var replayed []uint64
	err := c.Stream(ctx, StreamOptions{
		Since:        1,
		OnConnect:    func() { connects++ },
		OnDisconnect: func(err error, wait time.Duration) { disconnects++ },
		OnReplay:     func(m Message) { replayed = append(replayed, m.Seq) },
	}, func(m Message) error {
		got = append(got, m.Seq)
		if m.Seq == 9 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Stream = %v, want context.Canceled", err)
	}
	if fmt.Sprint(got) != "[3 5 9]" {
		t.Errorf("delivered %v, want [3 5 9] (no duplicate 5)", got)
	}
	if fmt.Sprint(replayed) != "[5]" {
		t.Errorf("replays reported %v, want [5]", replayed)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fmt.Sprint(f.sinces[:2]) != "[1 5]" {
		t.Errorf("since per connection = %v, want [1 5]", f.sinces)
	}
	if f.auths[0] == f.auths[1] {
		t.Error("the reconnect reused the first signature")
	}
	if connects != 2 || disconnects != 1 {
		t.Errorf("connects %d, disconnects %d", connects, disconnects)
	}
}

func TestStreamIdleTimeoutReconnects(t *testing.T) {
	keys := kez.GenerateKeys()
	f := &fakeStreams{t: t, keys: keys}
	silent := make(chan struct{})
	defer close(silent) // before the server's Close, which waits for handlers
	f.scripts = []func(http.ResponseWriter, func()){
		func(w http.ResponseWriter, flush func()) { // silent: no pings at all
			fmt.Fprint(w, "retry: 10\n\n")
			flush()
			<-silent // until the test is over: past IdleTimeout
		},
		func(w http.ResponseWriter, flush func()) { event(w, 1); flush() },
	}
	c := streamClient(t, f, keys)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var reasons []error
	err := c.Stream(ctx, StreamOptions{
		IdleTimeout:  time.Second, // covers connecting too: room for a loaded machine
		OnDisconnect: func(err error, _ time.Duration) { reasons = append(reasons, err) },
	}, func(m Message) error { return errors.New("got it") })
	if err == nil || err.Error() != "got it" {
		t.Errorf("Stream = %v, want the callback's error", err)
	}
	if len(reasons) != 1 || !errors.Is(reasons[0], errIdle) {
		t.Errorf("disconnect reasons = %v, want one idle timeout", reasons)
	}
}

func TestStreamStopsOnPermanentErrors(t *testing.T) {
	for status, code := range map[int]string{401: "unauthorized", 404: "not_found", 400: "missing_auth"} {
		srv := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"error":{"code":%q,"message":"no"}}`, code)
		})
		c := streamClient(t, srv, kez.GenerateKeys())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Stream(ctx, StreamOptions{}, func(Message) error { return nil })
		cancel()
		if CodeOf(err) != code {
			t.Errorf("HTTP %d: Stream = %v", status, err)
		}
	}
}

// TestStreamStopsOnOverlongLine: a line over the limit would come again on
// every reconnect from the same since, so it ends Stream with a
// *ProtocolError instead of a retry loop.
func TestStreamStopsOnOverlongLine(t *testing.T) {
	keys := kez.GenerateKeys()
	f := &fakeStreams{t: t, keys: keys, scripts: []func(http.ResponseWriter, func()){
		func(w http.ResponseWriter, flush func()) {
			event(w, 1)
			fmt.Fprintf(w, "id: 2\nevent: message\ndata: %s\n\n", strings.Repeat("x", maxSSELine))
			flush()
		},
		func(w http.ResponseWriter, flush func()) { event(w, 2) }, // not to be asked for
	}}
	c := streamClient(t, f, keys)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []uint64
	err := c.Stream(ctx, StreamOptions{OnDisconnect: func(err error, _ time.Duration) { t.Errorf("retried after %v", err) }},
		func(m Message) error {
			got = append(got, m.Seq)
			return nil
		})
	var protoErr *ProtocolError
	if !errors.As(err, &protoErr) || !strings.Contains(protoErr.Reason, "longer than") {
		t.Fatalf("Stream = %v, want a *ProtocolError about the line", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(got) != 1 || got[0] != 1 || len(f.sinces) != 1 {
		t.Errorf("delivered %v over %d connections, want [1] over 1", got, len(f.sinces))
	}
}

func TestStreamRetriesServerErrors(t *testing.T) {
	var calls atomic.Int32
	srv := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(503)
			fmt.Fprint(w, `{"error":{"code":"unavailable","message":"busy"}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		fmt.Fprint(w, "retry: 10\n\n")
		event(w, 4)
	})
	c := streamClient(t, srv, kez.GenerateKeys())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var waits []time.Duration
	err := c.Stream(ctx, StreamOptions{
		MaxBackoff:   50 * time.Millisecond,
		OnDisconnect: func(_ error, wait time.Duration) { waits = append(waits, wait) },
	}, func(m Message) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) || calls.Load() != 2 {
		t.Errorf("Stream = %v after %d calls", err, calls.Load())
	}
	if len(waits) != 1 || waits[0] > 50*time.Millisecond {
		t.Errorf("waits = %v, want one of at most MaxBackoff", waits)
	}
}

func TestStreamRejectsNonSSE(t *testing.T) {
	srv := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<html></html>")
	})
	c := streamClient(t, srv, kez.GenerateKeys())
	var pe *ProtocolError
	if err := c.Stream(context.Background(), StreamOptions{}, func(Message) error { return nil }); !errors.As(err, &pe) {
		t.Errorf("Stream = %v, want a ProtocolError", err)
	}
}

func TestBackoff(t *testing.T) {
	s := &streamState{retry: 3 * time.Second}
	for i := 0; i < 100; i++ {
		if d := s.backoff(0, time.Minute); d <= 0 || d > time.Second+time.Millisecond {
			t.Fatalf("first reconnect waits %v", d)
		}
		if d := s.backoff(1, time.Minute); d < 1500*time.Millisecond || d > 3*time.Second {
			t.Fatalf("after one failure waits %v", d)
		}
		if d := s.backoff(40, 30*time.Second); d < 15*time.Second || d > 30*time.Second {
			t.Fatalf("after many failures waits %v", d)
		}
	}
}

// TestStreamBacksOffFromStreamsThatEndAtOnce: a server that accepts and at
// once closes every stream must not be hammered.
func TestStreamBacksOffFromStreamsThatEndAtOnce(t *testing.T) {
	var calls atomic.Int32
	srv := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "retry: 200\n\n")
	})
	c := streamClient(t, srv, kez.GenerateKeys())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var waits []time.Duration
	err := c.Stream(ctx, StreamOptions{OnDisconnect: func(err error, wait time.Duration) {
		waits = append(waits, wait)
		if len(waits) == 3 {
			cancel()
		}
	}}, func(Message) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Stream = %v", err)
	}
	if waits[0] < 100*time.Millisecond || waits[2] < 400*time.Millisecond {
		t.Errorf("waits = %v, want growing from the server's 200 ms retry", waits)
	}
}
