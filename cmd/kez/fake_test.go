package main

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/kez"
)

// fakeServer is a KEZ server in miniature for printer and command tests
// that need no Caddy: clienttest.Fake (registrations, lookups with their
// log proofs, the binding log) plus one inbox (bob's) with scripted
// message objects, and the contact endpoints. It checks every signature of
// bob's requests.
type fakeServer struct {
	*clienttest.Fake
	t   *testing.T
	url string
	bob *kez.Keys

	mu       sync.Mutex
	messages []string // message objects, in seq order
	acts     []string // "PUT contacts <primary>" …
}

const fakeName = "kez.test"

func newFakeServer(t *testing.T, bob *kez.Keys) *fakeServer {
	f := &fakeServer{Fake: clienttest.NewFake(t, fakeName), t: t, bob: bob}
	f.url = f.URL
	f.Intercept = f.inbox
	f.register("bob", bob)
	return f
}

// register gives keys the handle, logged.
func (f *fakeServer) register(handle string, keys *kez.Keys) { f.Register(keys, handle) }

// add stores a message object for bob.
func (f *fakeServer) add(from string, request bool, envelope []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	seq := len(f.messages) + 1
	f.messages = append(f.messages, fmt.Sprintf(`{"seq":%d,"from":%q,"request":%v,"envelope":%s,"received_at":%d}`,
		seq, from, request, envelope, time.Now().UnixMilli()))
}

// inbox serves bob's inbox and contacts; everything else goes to the Fake.
func (f *fakeServer) inbox(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	if !strings.HasPrefix(path, "/v1/inbox/bob") {
		return false
	}
	fail := func(status int, code string) {
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"code":%q,"message":"fake"}}`, code)
	}
	_, query, _, err := kez.ParseQuery(r.URL.RawQuery, false, "since", "limit", "upto")
	if err == nil {
		req := kez.Request{Server: fakeName, Method: r.Method, Path: path, Query: query}
		_, _, err = req.Verify(f.bob.Private().Public().(ed25519.PublicKey), r.Header.Get("X-KEZ-Auth"), time.Now(), time.Minute)
	}
	if err != nil {
		f.t.Errorf("%s %s: %v", r.Method, r.URL, err)
		fail(401, "unauthorized")
		return true
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
	return true
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
