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
	"strings"
	"sync"
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
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return doRequest(t, req)
}

func doRequest(t testing.TB, req *http.Request) result {
	t.Helper()
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
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

func (u user) primary() string { return kez.FormatPrimary(u.key.Public().(ed25519.PublicKey)) }

// known are the users the helpers registered, by primary, so that send can
// have a recipient accept its sender.
var known sync.Map // primary → user

func register(t testing.TB, srv *testcaddy.Server, u user) result {
	t.Helper()
	reg, err := kez.SignRegistration(u.key, u.handle, serverName(t, srv.URL), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(reg)
	r := do(t, "POST", srv.URL+"/v1/register", string(b))
	if r.status == 201 || r.status == 200 {
		known.Store(u.primary(), u)
	}
	return r
}

// serverNames caches each server's configured name, which signatures cover.
var serverNames sync.Map // base URL → name

func serverName(t testing.TB, base string) string {
	t.Helper()
	if name, ok := serverNames.Load(base); ok {
		return name.(string)
	}
	r := do(t, "GET", base+"/v1/healthz", "")
	var h struct{ Server string }
	if err := json.Unmarshal(r.body, &h); err != nil || h.Server == "" {
		t.Fatalf("healthz of %s: %d %s", base, r.status, r.body)
	}
	serverNames.Store(base, h.Server)
	return h.Server
}

// sign is the X-KEZ-Auth value of u for a request to base (SPEC §2.0).
func sign(t testing.TB, base string, u user, method, path, query, body string, ts int64) string {
	t.Helper()
	req := kez.Request{Server: serverName(t, base), Method: method, Path: path, Query: query, Body: []byte(body)}
	return req.Sign(u.key, time.Unix(ts, 0))
}

// lastSigned is the time each signed string was last made at, so that
// signed can make a request that repeats another within a second anew:
// the server accepts a signature once (SPEC §2.0).
var lastSigned = struct {
	sync.Mutex
	ts map[string]int64
}{ts: map[string]int64{}}

// signed sends a request signed by u now (or a little later than the
// last identical request: any time within the skew is fine).
func signed(t testing.TB, base string, u user, method, pathAndQuery, body string) result {
	t.Helper()
	path, query, _ := strings.Cut(pathAndQuery, "?")
	ts := freshTS(t, base, u, method, pathAndQuery, body)
	return do(t, method, base+pathAndQuery, body, "X-KEZ-Auth", sign(t, base, u, method, path, query, body, ts))
}

// freshTS is now, or one second after the last time the same request was
// signed at for the same server name (instances on one NATS share it, and
// the record of used signatures), whichever is later.
func freshTS(t testing.TB, base string, u user, method, pathAndQuery, body string) int64 {
	t.Helper()
	key := strings.Join([]string{serverName(t, base), string(u.key), method, pathAndQuery, body}, "\n")
	lastSigned.Lock()
	defer lastSigned.Unlock()
	ts := max(time.Now().Unix(), lastSigned.ts[key]+1)
	lastSigned.ts[key] = ts
	return ts
}

// senders are the users send writes as, one per server, registered on first use.
var senders sync.Map // base URL → user

func defaultSender(t testing.TB, base string) user {
	t.Helper()
	if u, ok := senders.Load(base); ok {
		return u.(user)
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	u := newUser(fmt.Sprintf("sender-%x", id))
	want(t, "register the sender", register(t, &testcaddy.Server{URL: base}, u), 201, "")
	senders.Store(base, u)
	return u
}

// accepted remembers which recipients have accepted which senders.
var accepted sync.Map // recipient primary + sender primary → true

// lookupPrimary is the current primary of handle on base.
func lookupPrimary(t testing.TB, base, handle string) string {
	t.Helper()
	r := do(t, "GET", base+"/v1/u/"+handle, "")
	want(t, "look up "+handle, r, 200, "")
	var rec struct{ Primary string }
	_ = json.Unmarshal(r.body, &rec)
	return rec.Primary
}

// contactOf returns the server's test sender and to's primary, having had
// to (when these helpers registered it) accept the sender, so that its
// messages are not message requests.
func contactOf(t testing.TB, base, to string) (sender user, toPrimary string) {
	t.Helper()
	sender = defaultSender(t, base)
	toPrimary = lookupPrimary(t, base, to)
	if u, ok := known.Load(toPrimary); ok {
		if _, done := accepted.LoadOrStore(toPrimary+sender.primary(), true); !done {
			rcpt := u.(user)
			want(t, "accept the sender", signed(t, base, rcpt, "PUT", "/v1/inbox/"+rcpt.handle+"/contacts/"+sender.primary(), ""), 204, "")
		}
	}
	return sender, toPrimary
}

// sealFor is a test envelope from sender to the recipient's primary: the
// members the server reads (from, to, a unique sig) added to fields, a JSON
// object such as {"n":1}.
func sealFor(sender user, toPrimary, fields string) string {
	var id [32]byte
	_, _ = rand.Read(id[:])
	head := fmt.Sprintf(`{"from":"%s","to":"%s","sig":"%x"`, sender.primary(), toPrimary, id)
	if rest := strings.TrimSpace(fields[1:]); rest != "}" {
		head += ","
	}
	return head + fields[1:]
}

// sendRequest is a signed POST /v1/messages of envelope fields (see
// sealFor) from sender to the handle to.
func sendRequest(t testing.TB, base string, sender user, to, toPrimary, fields string) *http.Request {
	t.Helper()
	body := `{"to":"` + to + `","envelope":` + sealFor(sender, toPrimary, fields) + `}`
	req, err := http.NewRequest("POST", base+"/v1/messages", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-KEZ-Auth", sign(t, base, sender, "POST", "/v1/messages", "", body, time.Now().Unix()))
	return req
}

// sendAs posts envelope fields from sender to the handle to and returns the answer.
func sendAs(t testing.TB, base string, sender user, to, fields string) result {
	t.Helper()
	return doRequest(t, sendRequest(t, base, sender, to, lookupPrimary(t, base, to), fields))
}

// send posts envelope fields for to from the server's test sender, a
// contact of the recipient, and returns the seq.
func send(t testing.TB, srv *testcaddy.Server, to, fields string) uint64 {
	t.Helper()
	sender, toPrimary := contactOf(t, srv.URL, to)
	r := doRequest(t, sendRequest(t, srv.URL, sender, to, toPrimary, fields))
	want(t, "send", r, 201, "")
	var out struct{ Seq uint64 }
	if err := json.Unmarshal(r.body, &out); err != nil || out.Seq == 0 {
		t.Fatalf("send answer %s", r.body)
	}
	return out.Seq
}

type message struct {
	Seq        uint64          `json:"seq"`
	From       string          `json:"from"`
	FromAddr   string          `json:"from_addr"`
	Request    bool            `json:"request"`
	Envelope   json.RawMessage `json:"envelope"`
	ReceivedAt int64           `json:"received_at"`
}

// inbox reads one page.
func inbox(t testing.TB, srv *testcaddy.Server, u user, since uint64, limit int) (msgs []message, next uint64, more bool) {
	t.Helper()
	r := signed(t, srv.URL, u, "GET", fmt.Sprintf("/v1/inbox/%s?limit=%d&since=%d", u.handle, limit, since), "")
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
	path, query := "/v1/inbox/"+u.handle+"/stream", ""
	if since >= 0 {
		query = fmt.Sprintf("since=%d", since)
	}
	url := base + path
	if query != "" {
		url += "?" + query
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	pathAndQuery := path
	if query != "" {
		pathAndQuery += "?" + query
	}
	req.Header.Set("X-KEZ-Auth", sign(t, base, u, "GET", path, query, "", freshTS(t, base, u, "GET", pathAndQuery, "")))
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

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// readmeSection is the README from heading up to the next heading of the
// same or a higher level (testcaddy.ReadmeSection).
func readmeSection(t testing.TB, heading string) string { return testcaddy.ReadmeSection(t, heading) }
