package main

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/kez"
)

// fakeServer is a KEZ server in miniature for printer and command tests
// that need no Caddy: records of registered users, one inbox (bob's) with
// scripted message objects, and the contact endpoints. It checks every
// signature of bob's requests.
type fakeServer struct {
	t       *testing.T
	url     string
	bob     *kez.Keys
	records map[string]string // primary → record JSON
	handles map[string]string // handle → primary

	mu       sync.Mutex
	messages []string // message objects, in seq order
	acts     []string // "PUT contacts <primary>" …
}

const fakeName = "kez.test"

func newFakeServer(t *testing.T, bob *kez.Keys) *fakeServer {
	f := &fakeServer{t: t, bob: bob, records: map[string]string{}, handles: map[string]string{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	f.register("bob", bob)
	return f
}

// register gives keys the handle, as the server's record signed by keys.
func (f *fakeServer) register(handle string, keys *kez.Keys) {
	reg, err := kez.SignRegistration(keys.Private(), handle, fakeName, time.Unix(1764115200, 0))
	if err != nil {
		f.t.Fatal(err)
	}
	f.records[keys.Primary()] = fmt.Sprintf(`{"handle":%q,"server":%q,"address":"%s@%s","primary":%q,"registered_at":1764115200,"registration":%s}`,
		handle, fakeName, handle, fakeName, keys.Primary(), reg.Stored())
	f.handles[handle] = keys.Primary()
}

// add stores a message object for bob.
func (f *fakeServer) add(from string, request bool, envelope []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	seq := len(f.messages) + 1
	f.messages = append(f.messages, fmt.Sprintf(`{"seq":%d,"from":%q,"request":%v,"envelope":%s,"received_at":%d}`,
		seq, from, request, envelope, time.Now().UnixMilli()))
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, code string) {
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"code":%q,"message":"fake"}}`, code)
	}
	path := r.URL.Path
	if p, ok := strings.CutPrefix(path, "/v1/by-primary/"); ok {
		if rec, ok := f.records[p]; ok {
			fmt.Fprint(w, rec)
			return
		}
		fail(404, "not_found")
		return
	}
	if h, ok := strings.CutPrefix(path, "/v1/u/"); ok {
		h, _, _ = strings.Cut(strings.ToLower(h), "@")
		if rec, ok := f.records[f.handles[h]]; ok {
			fmt.Fprint(w, rec)
			return
		}
		fail(404, "not_found")
		return
	}
	if !strings.HasPrefix(path, "/v1/inbox/bob") {
		fail(404, "not_found")
		return
	}
	_, query, _, err := kez.ParseQuery(r.URL.RawQuery, false, "since", "limit", "upto")
	if err == nil {
		req := kez.Request{Server: fakeName, Method: r.Method, Path: path, Query: query}
		_, _, err = req.Verify(f.bob.Private().Public().(ed25519.PublicKey), r.Header.Get("X-KEZ-Auth"), time.Now(), time.Minute)
	}
	if err != nil {
		f.t.Errorf("%s %s: %v", r.Method, r.URL, err)
		fail(401, "unauthorized")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rest := strings.TrimPrefix(path, "/v1/inbox/bob")
	switch {
	case rest == "" && r.Method == http.MethodGet:
		msgs := f.messages
		if r.URL.Query().Get("since") != "" {
			msgs = nil // everything comes on the first page
		}
		fmt.Fprintf(w, `{"messages":[%s],"next_since":%d,"more":false}`, strings.Join(msgs, ","), len(f.messages))
	case rest == "/contacts":
		fmt.Fprint(w, `{"accepted":[],"blocked":[]}`)
	case strings.HasPrefix(rest, "/contacts/") || strings.HasPrefix(rest, "/blocked/"):
		list, primary, _ := strings.Cut(rest[1:], "/")
		f.acts = append(f.acts, r.Method+" "+list+" "+primary)
		w.WriteHeader(http.StatusNoContent)
	default:
		fail(404, "not_found")
	}
}

// seal seals plaintext from sender to recipient and returns the envelope JSON.
func seal(t *testing.T, from *kez.Keys, to string, plaintext string) []byte {
	t.Helper()
	link, err := from.LinkTo(to)
	if err != nil {
		t.Fatal(err)
	}
	env, err := link.Seal([]byte(plaintext))
	if err != nil {
		t.Fatal(err)
	}
	return env.AppendJSON(nil)
}

func text(from, id, words string) string {
	b, _ := json.Marshal(map[string]any{"type": "text", "id": id, "sent_at": time.Now().UnixMilli(), "text": words, "from_addr": from})
	return string(b)
}
