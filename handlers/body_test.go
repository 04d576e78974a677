package handlers

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// rawRequest writes a request head on a new connection to e's server and
// returns the connection and a reader of its answer.
func (e *env) rawRequest(t *testing.T, head string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	// A bound on the wait for the answer, not a measure of speed.
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	return conn, bufio.NewReader(conn)
}

func readRaw(t *testing.T, br *bufio.Reader) resp {
	t.Helper()
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b, close: res.Close}
}

// A body that trickles in, each byte soon after the last but the whole far
// slower than body_timeout, is cut off with 408 body_timeout (SPEC §2.5):
// over a real connection (read deadline) and where the writer has none (the
// body is closed when time is up).
func TestBodyTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.BodyTimeout = 300 * time.Millisecond })
	e.users(alice, "alice", bob, "bob")
	body := `{"to":"bob","envelope":` + envl(alice, bob) + `}`
	auth := e.sign(alice, "POST", "/v1/messages", "", []byte(body))

	t.Run("connection", func(t *testing.T) {
		conn, br := e.rawRequest(t, fmt.Sprintf("POST /v1/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Content-Length: %d\r\nX-KEZ-Auth: %s\r\n\r\n", serverName, len(body), auth))
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // one byte every 50 ms: the whole body would take ~15 s
			defer close(done)
			for i := range len(body) {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := conn.Write([]byte{body[i]}); err != nil {
					return
				}
			}
		}()
		r := readRaw(t, br)
		close(stop)
		<-done
		expect(t, "trickled body", r, 408, "body_timeout")
		if !r.close {
			t.Fatal("no Connection: close: the rest of the body would be read as the next request")
		}
	})

	t.Run("pipe", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for i := range len(body) {
				time.Sleep(20 * time.Millisecond)
				if _, err := pw.Write([]byte{body[i]}); err != nil {
					return // closed by the handler when time was up
				}
			}
			pw.Close()
		}()
		req := httptest.NewRequest("POST", "/v1/messages", pr)
		req.ContentLength = int64(len(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-KEZ-Auth", auth)
		w := httptest.NewRecorder()
		served := make(chan struct{})
		go func() { defer close(served); e.h.ServeHTTP(w, req) }()
		select {
		case <-served:
		case <-time.After(20 * time.Second):
			pw.CloseWithError(io.ErrUnexpectedEOF)
			t.Fatal("the handler waits for a trickling body without end")
		}
		pw.CloseWithError(io.ErrClosedPipe)
		var eb errorBody
		_ = json.Unmarshal(w.Body.Bytes(), &eb)
		if w.Code != 408 || eb.Error.Code != "body_timeout" {
			t.Fatalf("trickled body through a writer without deadlines: %d %s", w.Code, w.Body)
		}
	})

	if got := e.all(bob, "bob"); len(got) != 0 {
		t.Fatalf("a body cut off was stored: %+v", got)
	}
	// The same body, sent at once, is fine (and the signature still unspent).
	expect(t, "whole body", e.do("POST", "/v1/messages", strings.NewReader(body), "X-KEZ-Auth", auth), 201, "")
}

// A request that announces a huge Content-Length (under the limit) but
// sends a few bytes takes memory for those bytes only: the server must not
// reserve memory for a body before its bytes arrive (SPEC §2.5).
func TestAnnouncedLengthReservesNoMemory(t *testing.T) {
	const announced = 100 << 20
	e := newEnv(t, func(c *Config) {
		c.MaxEnvelope = 128 << 20 // 100 MB is within the limit: no 413 shortcut
		c.BodyTimeout = 200 * time.Millisecond
	})
	e.users(alice, "alice", bob, "bob")
	start := `{"to":"bob","envelope":{"v":1,`
	auth := e.sign(alice, "POST", "/v1/messages", "", []byte(start))

	allocated := func(fn func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		fn()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}

	t.Run("handler", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			_, _ = pw.Write([]byte(start)) // then nothing more, until the handler gives up
		}()
		req := httptest.NewRequest("POST", "/v1/messages", pr)
		req.ContentLength = announced
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-KEZ-Auth", auth)
		w := httptest.NewRecorder()
		n := allocated(func() { e.h.ServeHTTP(w, req) })
		pw.Close()
		if w.Code != 408 {
			t.Fatalf("status %d %s", w.Code, w.Body)
		}
		if n >= 1<<20 {
			t.Fatalf("a request announcing %d bytes and sending %d allocated %d bytes", announced, len(start), n)
		}
		t.Logf("allocated %d bytes", n)
	})

	t.Run("connection", func(t *testing.T) {
		var r resp
		n := allocated(func() {
			_, br := e.rawRequest(t, fmt.Sprintf("POST /v1/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
				"Content-Length: %d\r\nX-KEZ-Auth: %s\r\n\r\n%s", serverName, announced, auth, start))
			r = readRaw(t, br)
		})
		expect(t, "announced 100 MB, sent a few bytes", r, 408, "body_timeout")
		if n >= 1<<20 {
			t.Fatalf("a request announcing %d bytes and sending %d allocated %d bytes (server and client)", announced, len(start), n)
		}
		t.Logf("allocated %d bytes", n)
	})
}
