package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// A server that reads a POST from a reused keep-alive connection and closes
// it without answering (as the old server does during `caddy reload`): Go's
// transport sends it again on a new connection, because the client marks
// its POSTs with an Idempotency-Key.
func TestPostResentWhenAReusedConnectionCloses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var requests atomic.Int32
	keys := make(chan string, 3)
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
					if n == 2 {
						return // read, never answered: the connection just closes
					}
					body := fmt.Sprintf(`{"seq":%d,"to":"bob","received_at":1}`, n)
					fmt.Fprintf(conn, "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
				}
			}()
		}
	}()

	c, err := New("http://"+ln.Addr().String(), Options{HTTPClient: &http.Client{Timeout: 10 * time.Second}})
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
}
