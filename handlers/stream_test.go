package handlers

import (
	"bufio"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/hub"
)

// gatedWriter holds every Write while the gate is shut, and says when one
// is waiting: a client that has stopped reading, without filling sockets.
type gatedWriter struct {
	http.ResponseWriter
	shut    *atomic.Bool
	waiting chan<- struct{}
	open    <-chan struct{}
}

func (g gatedWriter) Write(p []byte) (int, error) {
	if g.shut.Load() {
		g.waiting <- struct{}{}
		<-g.open
	}
	return g.ResponseWriter.Write(p)
}

func (g gatedWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }

// logLines is a log destination that a test reads while handlers write:
// one line a write, dropped when the channel is full.
type logLines chan string

func (l logLines) Write(p []byte) (int, error) {
	select {
	case l <- string(p):
	default:
	}
	return len(p), nil
}

// String takes the lines written so far.
func (l logLines) String() string {
	var b strings.Builder
	for {
		select {
		case line := <-l:
			b.WriteString(line)
		default:
			return b.String()
		}
	}
}

// A stream whose client falls a hub buffer behind is ended, counted in
// Counters.StreamOverflowed and logged at debug level; a stream ended for
// another reason (the handle's key changed) is not counted.
func TestStreamOverflowIsCounted(t *testing.T) {
	var overflowed atomic.Int64
	count := func(c *Config) { c.Counters.StreamOverflowed = func() { overflowed.Add(1) } }
	e := newEnv(t, count)
	e.users(alice, "alice")

	// A handler of its own, on the env's store and hub, that logs and
	// writes through the gate.
	logs := make(logLines, 64)
	cfg := e.h.cfg
	count(&cfg)
	h := New(cfg, e.store, e.hub, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	var shut atomic.Bool
	waiting, open := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(gatedWriter{w, &shut, waiting, open}, r)
	}))
	t.Cleanup(func() { h.Close(); srv.Close() })

	u, hdr := e.streamURL(alice, "alice", "", false)
	req, _ := http.NewRequest("GET", srv.URL+u, nil)
	req.Header.Set(hdr[0], hdr[1])
	res, err := srv.Client().Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("stream: %v %v", res, err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	if line, _ := br.ReadString('\n'); line != "retry: 3000\n" {
		t.Fatalf("first line %q", line)
	}

	// The handler takes one event and is held writing it; meanwhile more
	// than a buffer's worth arrives.
	shut.Store(true)
	e.hub.Publish("alice", hub.Event{Seq: 1, Data: []byte(`{}`)})
	select {
	case <-waiting:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream did not write the event")
	}
	for seq := range uint64(hub.BufferSize + 1) {
		e.hub.Publish("alice", hub.Event{Seq: seq + 2, Data: []byte(`{}`)})
	}
	if n := e.hub.Subscribers("alice"); n != 0 {
		t.Fatalf("%d subscribers after an overflow", n)
	}
	shut.Store(false)
	close(open)
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, br); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the overflowed stream did not end")
	}
	if n := overflowed.Load(); n != 1 {
		t.Fatalf("StreamOverflowed called %d times, want 1", n)
	}
	if l := logs.String(); !strings.Contains(l, "level=DEBUG") || !strings.Contains(l, "stream overflowed") || !strings.Contains(l, "handle=alice") {
		t.Fatalf("no debug log of the overflow in %q", l)
	}

	// Ended by the hub for a key change: not an overflow.
	c, _ := e.openStream(t, alice, "alice", "")
	c.start(t)
	e.hub.End("alice")
	if !c.ended(10 * time.Second) {
		t.Fatal("stream still open after hub.End")
	}
	if n := overflowed.Load(); n != 1 {
		t.Fatalf("StreamOverflowed called %d times after a stream ended by the hub, want 1", n)
	}
}

// A ping comes only after Keepalive of silence: a stream whose events come
// more often than that gets none, and an idle one gets one (SPEC §2.7).
func TestStreamKeepaliveAfterSilence(t *testing.T) {
	const keepalive = 400 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.Keepalive = keepalive })
	e.users(alice, "alice")
	c, _ := e.openStream(t, alice, "alice", "")
	c.start(t)
	// A bound on a wait for an event that never comes, not a speed check.
	timer := time.AfterFunc(time.Minute, func() { c.res.Body.Close() })
	defer timer.Stop()

	// Events every keepalive/5, for 2.4 keepalives: a ticker would have
	// pinged between them twice.
	var last time.Time
	for seq := uint64(1); seq <= 12; seq++ {
		time.Sleep(keepalive / 5)
		e.hub.Publish("alice", hub.Event{Seq: seq, Data: []byte(`{}`)})
		ev, ok := c.next()
		if !ok || ev.event != "message" || ev.id != strconv.FormatUint(seq, 10) {
			t.Fatalf("got %+v (ok %v) while events flow, want event %d", ev, ok, seq)
		}
		last = time.Now()
	}
	ev, ok := c.next()
	if !ok || ev.event != "comment" || ev.data != ": ping" {
		t.Fatalf("got %+v (ok %v) after the events, want a ping", ev, ok)
	}
	if quiet := time.Since(last); quiet < keepalive/2 {
		t.Fatalf("a ping %s after the last event, with a keepalive of %s", quiet, keepalive)
	}
}
