package e2e

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/kez"
)

func TestMain(m *testing.M) { testcaddy.Main(m) }

var client = &http.Client{Timeout: 30 * time.Second}

type user struct {
	handle string
	key    ed25519.PrivateKey
}

func newUser(handle string) user {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return user{handle: handle, key: key}
}

type result struct {
	status int
	header http.Header
	body   []byte
}

func (r result) code() string {
	var e struct {
		Error struct{ Code, Message string }
	}
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Code
}

func do(t testing.TB, method, url, body string, headers ...string) result {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return result{res.StatusCode, res.Header, b}
}

func want(t testing.TB, what string, r result, status int, code string) {
	t.Helper()
	if r.status != status || (code != "" && r.code() != code) {
		t.Fatalf("%s: got %d %s, want %d %s", what, r.status, r.body, status, code)
	}
}

func register(t testing.TB, srv *testcaddy.Server, u user) result {
	t.Helper()
	reg, err := kez.SignRegistration(u.key, u.handle, testcaddy.ServerName, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(reg)
	return do(t, "POST", srv.URL+"/v1/register", string(b))
}

// send posts an envelope for to and returns the seq.
func send(t testing.TB, srv *testcaddy.Server, to, envelope string) uint64 {
	t.Helper()
	r := do(t, "POST", srv.URL+"/v1/messages", `{"to":"`+to+`","envelope":`+envelope+`}`)
	want(t, "send", r, 201, "")
	var out struct{ Seq uint64 }
	if err := json.Unmarshal(r.body, &out); err != nil || out.Seq == 0 {
		t.Fatalf("send answer %s", r.body)
	}
	return out.Seq
}

type message struct {
	Seq        uint64          `json:"seq"`
	Envelope   json.RawMessage `json:"envelope"`
	ReceivedAt int64           `json:"received_at"`
}

// inbox reads one page.
func inbox(t testing.TB, srv *testcaddy.Server, u user, since uint64, limit int) (msgs []message, next uint64, more bool) {
	t.Helper()
	ts := time.Now().Unix()
	r := do(t, "GET", fmt.Sprintf("%s/v1/inbox/%s?since=%d&limit=%d", srv.URL, u.handle, since, limit), "",
		"X-KEZ-Auth", kez.SignAuth(u.key, kez.InboxAuthMessage(u.handle, since, ts), ts))
	want(t, "inbox", r, 200, "")
	var out struct {
		Messages  []message `json:"messages"`
		NextSince uint64    `json:"next_since"`
		More      bool      `json:"more"`
	}
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("inbox %s: %v", r.body, err)
	}
	return out.Messages, out.NextSince, out.More
}

// allInbox pages through the whole inbox.
func allInbox(t testing.TB, srv *testcaddy.Server, u user) []message {
	t.Helper()
	var all []message
	since := uint64(0)
	for {
		msgs, next, more := inbox(t, srv, u, since, 500)
		all = append(all, msgs...)
		since = next
		if !more {
			return all
		}
	}
}

// stream is an open SSE connection.
type stream struct {
	res    *http.Response
	cancel context.CancelFunc
	events chan sseEvent
}

type sseEvent struct {
	id, event, data string
}

// openStream connects; since<0 omits the parameter. It fails the test on a non-200.
func openStream(t testing.TB, srv *testcaddy.Server, u user, since int64, headers ...string) *stream {
	t.Helper()
	s, r := tryStream(t, srv.URL, u, since, headers...)
	if s == nil {
		t.Fatalf("stream: %d %s", r.status, r.body)
	}
	return s
}

func tryStream(t testing.TB, base string, u user, since int64, headers ...string) (*stream, result) {
	t.Helper()
	ts := time.Now().Unix()
	url := base + "/v1/inbox/" + u.handle + "/stream?auth=" + kez.SignAuth(u.key, kez.StreamAuthMessage(u.handle, ts), ts)
	if since >= 0 {
		url += fmt.Sprintf("&since=%d", since)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := (&http.Client{}).Do(req)
	if err != nil {
		cancel()
		t.Fatalf("stream: %v", err)
	}
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		cancel()
		return nil, result{res.StatusCode, res.Header, b}
	}
	s := &stream{res: res, cancel: cancel, events: make(chan sseEvent, 100000)}
	go s.read()
	t.Cleanup(s.close)
	return s, result{status: 200, header: res.Header}
}

func (s *stream) close() { s.cancel(); s.res.Body.Close() }

// read parses events until the response ends, then closes events.
func (s *stream) read() {
	defer close(s.events)
	sc := bufio.NewScanner(s.res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev != (sseEvent{}) {
				s.events <- ev
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, ":"):
			s.events <- sseEvent{event: "comment", data: line}
		case strings.HasPrefix(line, "retry: "):
			ev.event, ev.data = "retry", line[7:]
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		}
	}
}

// nextMessage waits for the next message event; ok=false when the stream ended.
func (s *stream) nextMessage(t testing.TB, within time.Duration) (message, bool) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, open := <-s.events:
			if !open {
				return message{}, false
			}
			if ev.event != "message" {
				continue
			}
			var m message
			if err := json.Unmarshal([]byte(ev.data), &m); err != nil || fmt.Sprint(m.Seq) != ev.id {
				t.Fatalf("event id %s data %q: %v", ev.id, ev.data, err)
			}
			return m, true
		case <-deadline:
			t.Fatalf("no message within %s", within)
		}
	}
}

// waitEnd waits for the stream to end, discarding events.
func (s *stream) waitEnd(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case _, open := <-s.events:
			if !open {
				return
			}
		case <-deadline:
			t.Fatalf("stream still open after %s", within)
		}
	}
}

func signInbox(u user, since uint64, ts int64) string {
	return kez.SignAuth(u.key, kez.InboxAuthMessage(u.handle, since, ts), ts)
}

func signStream(u user, ts int64) string {
	return kez.SignAuth(u.key, kez.StreamAuthMessage(u.handle, ts), ts)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// readmeSection is the README from heading (e.g. "## Try it") up to the next
// heading of the same or a higher level, so tests can run what the README says.
func readmeSection(t testing.TB, heading string) string {
	t.Helper()
	root, err := testcaddy.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "\n"+heading+"\n")
	if start < 0 {
		t.Fatalf("README has no %q section", heading)
	}
	level := strings.IndexByte(heading, ' ') // the number of #
	lines := strings.SplitAfter(text[start+1:], "\n")
	inCode := false // "# ..." in a shell block is a comment, not a heading
	for i, line := range lines[1:] {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if n := len(line) - len(strings.TrimLeft(line, "#")); !inCode && n > 0 && n <= level && strings.HasPrefix(line[n:], " ") {
			return strings.Join(lines[:i+1], "")
		}
	}
	return text[start+1:]
}
