package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/kez"
)

// A server that reads a POST from a reused keep-alive connection and closes
// it without answering (as the old server does during `caddy reload`): Go's
// transport sends it again on a new connection, because the client marks
// its sends with an Idempotency-Key. The resend is the identical request,
// signature included: the server either never saw it, or has stored the
// envelope and answers with its original receipt (SPEC §2.5).
func TestPostResentWhenAReusedConnectionCloses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var requests atomic.Int32
	keys := make(chan string, 3)
	auths := make(chan string, 3)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					n := requests.Add(1)
					keys <- req.Header.Get("Idempotency-Key")
					auths <- req.Header.Get("X-KEZ-Auth")
					if n == 2 {
						return // read, never answered: the connection just closes
					}
					body := fmt.Sprintf(`{"seq":%d,"to":"bob","received_at":1}`, n)
					fmt.Fprintf(conn, "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
				}
			}()
		}
	}()

	c, err := New("http://"+ln.Addr().String(), Options{HTTPClient: &http.Client{Timeout: 10 * time.Second},
		Keys: kez.GenerateKeys(), ServerName: "kez.test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if r, err := c.PostEnvelope(ctx, "bob", json.RawMessage(`{"n":1}`)); err != nil || r.Seq != 1 {
		t.Fatalf("first send = %+v, %v", r, err)
	}
	// Goes out on the same (reused) connection, which then closes unanswered.
	r, err := c.PostEnvelope(ctx, "bob", json.RawMessage(`{"n":2}`))
	if err != nil || r.Seq != 3 {
		t.Fatalf("second send = %+v, %v; want it resent and answered (seq 3)", r, err)
	}
	first, lost, resent := <-keys, <-keys, <-keys
	if first == "" || lost == "" || lost != resent || first == lost {
		t.Errorf("Idempotency-Key per attempt: %q, %q, %q; want one per send, the same on the resend", first, lost, resent)
	}
	if first, lost, resent := <-auths, <-auths, <-auths; first == "" || lost == "" || first == lost || lost != resent {
		t.Errorf("X-KEZ-Auth per attempt: %q, %q, %q; want the transport's resend to be the same request", first, lost, resent)
	}
}

// A send whose connection breaks after the request went out (on a new
// connection, which Go's transport does not resend) is sent again by the
// client, with the same body and a new signature; the server's 200 with the
// original receipt is success, marked AlreadyStored.
func TestSendResentAfterNetworkError(t *testing.T) {
	var mu sync.Mutex
	var bodies, auths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies, auths = append(bodies, string(b)), append(auths, r.Header.Get("X-KEZ-Auth"))
		n := len(bodies)
		mu.Unlock()
		if n == 1 { // stored, but the answer is lost
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
			return
		}
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, `{"seq":7,"to":"bob","received_at":1}`)
	}))
	defer srv.Close()
	c, _ := New(srv.URL, Options{Keys: kez.GenerateKeys(), ServerName: "kez.test", HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}})
	r, err := c.PostEnvelope(context.Background(), "bob", json.RawMessage(`{"n":1}`))
	if err != nil || r.Seq != 7 || !r.AlreadyStored {
		t.Fatalf("send = %+v, %v", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 2 || bodies[0] != bodies[1] || auths[0] == auths[1] {
		t.Errorf("attempts: bodies %q, auths %q; want the same body signed anew", bodies, auths)
	}
}

// A GET is resent by Go's transport as it was when its keep-alive
// connection closes unanswered; if the server had already taken the
// signature, the resend gets 401 "signature already used". The client then
// signs again, once.
func TestUnauthorizedSignedAgainOnce(t *testing.T) {
	var mu sync.Mutex
	var auths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Header.Get("X-KEZ-Auth"))
		n := len(auths)
		mu.Unlock()
		switch {
		case n == 1 || r.URL.Path == "/v1/inbox/eve":
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":{"code":"unauthorized","message":"signature already used: sign every request afresh"}}`)
			return
		case r.URL.Path == "/v1/inbox/mallory":
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":{"code":"unauthorized","message":"auth signature does not verify for this key, server and request"}}`)
			return
		}
		fmt.Fprint(w, `{"messages":[],"next_since":0,"more":false}`)
	}))
	defer srv.Close()
	// A clock that stands still: the second signature needs a later second.
	now := time.Now()
	c, _ := New(srv.URL, Options{Keys: kez.GenerateKeys(), Handle: "alice", ServerName: "kez.test", Now: func() time.Time { return now }})
	if _, err := c.Inbox(context.Background(), 0, 0); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(auths) != 2 || auths[0] == auths[1] || !strings.HasPrefix(auths[1], fmt.Sprint(now.Unix()+1, ":")) {
		t.Errorf("auths %q; want a second one at the next second", auths)
	}
	auths = nil
	mu.Unlock()
	// A refusal that stays is reported after the second try.
	m, _ := New(srv.URL, Options{Keys: kez.GenerateKeys(), Handle: "mallory", ServerName: "kez.test"})
	if _, err := m.Inbox(context.Background(), 0, 0); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("inbox = %v", err)
	}
	mu.Lock()
	if len(auths) != 2 {
		t.Errorf("%d attempts, want 2", len(auths))
	}
	auths = nil
	mu.Unlock()
	// "Already used" again and again (other processes signing the same
	// request in the same second): a few more seconds, then the error.
	e, _ := New(srv.URL, Options{Keys: kez.GenerateKeys(), Handle: "eve", ServerName: "kez.test", Now: func() time.Time { return now }})
	if _, err := e.Inbox(context.Background(), 0, 0); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("inbox = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(auths) != maxReused {
		t.Errorf("%d attempts, want %d", len(auths), maxReused)
	}
	for i, a := range auths {
		if !strings.HasPrefix(a, fmt.Sprint(now.Unix()+int64(i), ":")) {
			t.Errorf("attempt %d signed as %s, want at %d", i, a, now.Unix()+int64(i))
		}
	}
}

// The same request twice in one second gets two signatures: the server
// would refuse the second as already used.
func TestSameRequestSignedAtNewTimestamps(t *testing.T) {
	var s stamper
	key := [32]byte{1}
	other := [32]byte{2}
	got := []int64{s.next(key, 100), s.next(key, 100), s.next(other, 100), s.next(key, 100), s.next(key, 101), s.next(key, 105), s.next(other, 105)}
	if fmt.Sprint(got) != "[100 101 100 102 103 105 105]" {
		t.Errorf("timestamps %v", got)
	}
	if len(s.used) != 2 {
		t.Errorf("%d requests remembered; only those signed at the current second or later are needed", len(s.used))
	}
}
