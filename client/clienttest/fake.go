package clienttest

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/kez"
)

// Fake is a KEZ server in miniature with a real binding log (SPEC §5),
// for tests of what clients do when a server lies. It keeps bindings and a
// tlog tree, signs checkpoints with its own note key, and serves the log
// endpoints, lookups with inclusion proofs, registration, rotation and
// deletion (checked as the real server checks them), and a bare relay of
// messages (no request signatures checked). Tests change it behind its
// clients' backs: bindings that are not in the log, leaves nobody signed,
// a log rewritten from some size on.
type Fake struct {
	t    testing.TB
	Name string
	URL  string
	// LogKey is the verifier key of the log (as GET /v1/log/key serves it).
	LogKey string

	mu       sync.Mutex
	signer   note.Signer
	leaves   [][]byte
	hashes   []tlog.Hash
	bindings map[string]*fakeBinding // handle → current binding
	served   map[string]*fakeBinding // handle → a record served instead (not in the log)
	inboxes  map[string][]string     // handle → message objects
	accepted map[string][]string     // handle → primaries accepted (PUT …/contacts/…)
	// Intercept, when set, may answer a request itself (true) before the
	// fake does.
	Intercept func(w http.ResponseWriter, r *http.Request) bool
	// APIBase, when set, is served as the urn:kez:api link of WebFinger
	// answers (SPEC §8).
	APIBase string
}

// Accepted are the primaries handle's owner accepted, in order (repeats
// included).
func (f *Fake) Accepted(handle string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.accepted[handle]...)
}

// Inbox is the message objects stored for handle.
func (f *Fake) Inbox(handle string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.inboxes[handle]...)
}

type fakeBinding struct {
	primary      string
	registration []byte
	rotation     []byte
	index        int64
	registeredAt int64
}

// NewFake starts a fake server named name with a fresh log key.
func NewFake(t testing.TB, name string) *Fake {
	f := &Fake{t: t, Name: name, bindings: map[string]*fakeBinding{}, served: map[string]*fakeBinding{}, inboxes: map[string][]string{}, accepted: map[string][]string{}}
	skey, vkey, err := note.GenerateKey(rand.Reader, kez.LogOrigin(name))
	if err != nil {
		t.Fatal(err)
	}
	f.signer, _ = note.NewSigner(skey)
	f.LogKey = vkey
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// ReadHashes serves tlog from the fake's tree.
func (f *Fake) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x >= int64(len(f.hashes)) {
			return nil, fmt.Errorf("no hash %d", x)
		}
		out[i] = f.hashes[x]
	}
	return out, nil
}

// Append adds a leaf as it is, signed or not (callers hold no lock).
func (f *Fake) Append(leaf []byte) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.appendLocked(leaf)
}

func (f *Fake) appendLocked(leaf []byte) int64 {
	n := int64(len(f.leaves))
	hs, err := tlog.StoredHashes(n, leaf, f)
	if err != nil {
		f.t.Fatal(err)
	}
	f.leaves = append(f.leaves, leaf)
	f.hashes = append(f.hashes, hs...)
	return n
}

// Size is the number of leaves.
func (f *Fake) Size() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.leaves))
}

// Truncate rewrites history: the log goes back to its first n leaves, so
// what is appended next makes checkpoints that no consistency proof joins
// to those served before. Bindings are left as they are.
func (f *Fake) Truncate(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leaves = f.leaves[:n]
	f.hashes = f.hashes[:tlog.StoredHashCount(n)]
}

// Register binds handle to keys with a signed registration, logged.
func (f *Fake) Register(keys *kez.Keys, handle string) int64 {
	reg, err := kez.SignRegistration(keys.Private(), handle, f.Name, time.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	leaf := reg.Stored()
	i := f.appendLocked(leaf)
	f.bindings[handle] = &fakeBinding{primary: keys.Primary(), registration: leaf, index: i, registeredAt: time.Now().Unix()}
	return i
}

// Rotate moves handle from old to new with a rotation both sign, logged.
func (f *Fake) Rotate(old, new *kez.Keys, handle string) int64 {
	return f.rotate(old, new, handle, false)
}

// rotate is Rotate, or with force ForceRotate.
func (f *Fake) rotate(old, new *kez.Keys, handle string, force bool) int64 {
	rot, err := kez.SignRotation(old.Private(), new.Private(), handle, f.Name, time.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	leaf := rot.JCS()
	i := f.appendLocked(leaf)
	b := f.bindings[handle]
	if force {
		reg := []byte(nil)
		if b != nil {
			reg = b.registration
		}
		b = &fakeBinding{registration: reg, registeredAt: time.Now().Unix()}
	}
	f.bindings[handle] = &fakeBinding{primary: new.Primary(), registration: b.registration, rotation: leaf, index: i, registeredAt: b.registeredAt}
	return i
}

// Delete ends handle's binding with a deletion signed by keys, logged.
func (f *Fake) Delete(keys *kez.Keys, handle string) int64 {
	del, err := kez.SignDeletion(keys.Private(), handle, f.Name, time.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.appendLocked(del.JCS())
	delete(f.bindings, handle)
	return i
}

// Serve answers lookups of handle with keys' own registration of it, which
// is not in the log: what a proxy or a server substituting a key does.
func (f *Fake) Serve(keys *kez.Keys, handle string) {
	reg, err := kez.SignRegistration(keys.Private(), handle, f.Name, time.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.served[handle] = &fakeBinding{primary: keys.Primary(), registration: reg.Stored(), index: int64(len(f.leaves)) - 1, registeredAt: time.Now().Unix()}
}

// Checkpoint is the signed checkpoint note of the current tree.
func (f *Fake) Checkpoint() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return string(f.checkpointLocked())
}

func (f *Fake) checkpointLocked() []byte {
	n := int64(len(f.leaves))
	root, err := tlog.TreeHash(n, f)
	if err != nil {
		f.t.Fatal(err)
	}
	msg, err := note.Sign(&note.Note{Text: kez.FormatCheckpoint(kez.LogOrigin(f.Name), n, root)}, f.signer)
	if err != nil {
		f.t.Fatal(err)
	}
	return msg
}

func (f *Fake) logMember(index int64) map[string]any {
	n := int64(len(f.leaves))
	proof := []string{}
	if index >= 0 && index < n {
		p, err := tlog.ProveRecord(n, index, f)
		if err != nil {
			f.t.Fatal(err)
		}
		for _, h := range p {
			proof = append(proof, h.String())
		}
	}
	return map[string]any{"index": index, "checkpoint": string(f.checkpointLocked()), "inclusion": proof}
}

func (f *Fake) recordLocked(handle string, b *fakeBinding) map[string]any {
	rec := map[string]any{"handle": handle, "server": f.Name, "address": handle + "@" + f.Name, "primary": b.primary,
		"registered_at": b.registeredAt, "registration": json.RawMessage(b.registration), "log": f.logMember(b.index)}
	if b.rotation != nil {
		rec["rotation"] = json.RawMessage(b.rotation)
	}
	return rec
}

// lookupLocked is the binding served for handle.
func (f *Fake) lookupLocked(handle string) *fakeBinding {
	if b, ok := f.served[handle]; ok {
		return b
	}
	return f.bindings[handle]
}

func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.Intercept != nil && f.Intercept(w, r) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	reply := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	fail := func(status int, code string) {
		reply(status, map[string]any{"error": map[string]string{"code": code, "message": "fake: " + code}})
	}
	text := func(s string) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, s)
	}
	q := r.URL.Query()
	num := func(name string) int64 { n, _ := strconv.ParseInt(q.Get(name), 10, 64); return n }
	path := r.URL.Path
	switch {
	case path == "/v1/healthz":
		reply(200, map[string]any{"server": f.Name, "status": "ok", "version": "fake", "protocol": 2, "log_key": f.LogKey})
	case path == "/.well-known/webfinger":
		h, host, ok := kez.ParseAcct(q.Get("resource"))
		if !ok || host != f.Name || f.lookupLocked(h) == nil {
			fail(404, "not_found")
			return
		}
		links := []map[string]string{{"rel": "urn:kez:chat", "type": "application/json", "href": f.URL + "/v1/u/" + h}}
		if f.APIBase != "" {
			links = append(links, map[string]string{"rel": "urn:kez:api", "href": f.APIBase})
		}
		reply(200, map[string]any{"subject": "acct:" + h + "@" + f.Name, "links": links})
	case path == "/v1/log/key":
		text(f.LogKey + "\n")
	case path == "/v1/log/checkpoint":
		text(string(f.checkpointLocked()))
	case path == "/v1/log/entries":
		start, limit := num("start"), min(max(num("limit"), 1), 1000)
		entries := []map[string]any{}
		for i := start; i < int64(len(f.leaves)) && i < start+limit; i++ {
			entries = append(entries, map[string]any{"index": i, "data": f.leaves[i]})
		}
		reply(200, map[string]any{"entries": entries})
	case path == "/v1/log/consistency":
		m, n := num("old"), num("new")
		if m < 1 || m > n || n > int64(len(f.leaves)) {
			fail(400, "bad_request")
			return
		}
		p, err := tlog.ProveTree(n, m, f)
		if err != nil {
			f.t.Fatal(err)
		}
		proof := []string{}
		for _, h := range p {
			proof = append(proof, h.String())
		}
		reply(200, map[string]any{"proof": proof})
	case strings.HasPrefix(path, "/v1/u/"):
		h, _, _ := strings.Cut(strings.ToLower(strings.TrimPrefix(path, "/v1/u/")), "@")
		if b := f.lookupLocked(h); b != nil {
			reply(200, f.recordLocked(h, b))
			return
		}
		fail(404, "not_found")
	case strings.HasPrefix(path, "/v1/by-primary/"):
		p := strings.TrimPrefix(path, "/v1/by-primary/")
		for h, b := range f.bindings {
			if sb, ok := f.served[h]; ok {
				b = sb
			}
			if b.primary == p {
				reply(200, f.recordLocked(h, b))
				return
			}
		}
		for h, b := range f.served {
			if b.primary == p {
				reply(200, f.recordLocked(h, b))
				return
			}
		}
		fail(404, "not_found")
	case path == "/v1/register" && r.Method == http.MethodPost:
		body, _ := io.ReadAll(r.Body)
		reg, p, err := kez.VerifyRegistration(body, kez.RegistrationPolicy{Server: f.Name, Now: time.Now(), Skew: 5 * time.Minute})
		if err != nil {
			fail(400, err.(*kez.Error).Code)
			return
		}
		if b, ok := f.bindings[p.Handle]; ok {
			if b.primary == p.Primary {
				reply(200, f.recordLocked(p.Handle, b))
				return
			}
			fail(409, "handle_taken")
			return
		}
		leaf := reg.Stored()
		i := f.appendLocked(leaf)
		f.bindings[p.Handle] = &fakeBinding{primary: p.Primary, registration: leaf, index: i, registeredAt: time.Now().Unix()}
		reply(201, f.recordLocked(p.Handle, f.bindings[p.Handle]))
	case path == "/v1/rotate" && r.Method == http.MethodPost:
		body, _ := io.ReadAll(r.Body)
		rot, p, err := kez.VerifyRotation(body, kez.ChangePolicy{Server: f.Name, Now: time.Now(), Skew: 5 * time.Minute})
		if err != nil {
			fail(400, err.(*kez.Error).Code)
			return
		}
		b, ok := f.bindings[p.Handle]
		if !ok || b.primary != p.Old {
			if ok && bytes.Equal(b.rotation, rot.JCS()) {
				reply(200, f.recordLocked(p.Handle, b))
				return
			}
			fail(404, "not_found")
			return
		}
		leaf := rot.JCS()
		i := f.appendLocked(leaf)
		f.bindings[p.Handle] = &fakeBinding{primary: p.New, registration: b.registration, rotation: leaf, index: i, registeredAt: b.registeredAt}
		reply(200, f.recordLocked(p.Handle, f.bindings[p.Handle]))
	case path == "/v1/delete" && r.Method == http.MethodPost:
		body, _ := io.ReadAll(r.Body)
		del, p, err := kez.VerifyDeletion(body, kez.ChangePolicy{Server: f.Name, Now: time.Now(), Skew: 5 * time.Minute})
		if err != nil {
			fail(400, err.(*kez.Error).Code)
			return
		}
		if b, ok := f.bindings[p.Handle]; !ok || b.primary != p.Primary {
			fail(404, "not_found")
			return
		}
		i := f.appendLocked(del.JCS())
		delete(f.bindings, p.Handle)
		reply(200, map[string]any{"handle": p.Handle, "deleted": true, "log": f.logMember(i)})
	case path == "/v1/messages" && r.Method == http.MethodPost:
		var body struct {
			To       string          `json:"to"`
			FromAddr string          `json:"from_addr"`
			Envelope json.RawMessage `json:"envelope"`
		}
		raw, _ := io.ReadAll(r.Body)
		if json.Unmarshal(raw, &body) != nil {
			fail(400, "bad_request")
			return
		}
		hdr, err := kez.ReadEnvelopeHeader(body.Envelope)
		if err != nil || f.bindings[body.To] == nil {
			fail(404, "unknown_recipient")
			return
		}
		seq := len(f.inboxes[body.To]) + 1
		fromAddr := ""
		if body.FromAddr != "" {
			fromAddr = fmt.Sprintf(`"from_addr":%q,`, body.FromAddr)
		}
		f.inboxes[body.To] = append(f.inboxes[body.To], fmt.Sprintf(`{"seq":%d,"from":%q,%s"request":false,"envelope":%s,"received_at":%d}`,
			seq, hdr.From, fromAddr, body.Envelope, time.Now().UnixMilli()))
		reply(201, map[string]any{"seq": seq, "to": body.To, "received_at": time.Now().UnixMilli()})
	case strings.HasPrefix(path, "/v1/inbox/") && strings.Contains(path, "/contacts/") && r.Method == http.MethodPut:
		h, p, _ := strings.Cut(strings.TrimPrefix(path, "/v1/inbox/"), "/contacts/")
		f.accepted[h] = append(f.accepted[h], p)
		w.WriteHeader(http.StatusNoContent)
	case strings.HasPrefix(path, "/v1/inbox/") && r.Method == http.MethodGet && strings.Count(path, "/") == 3:
		h := strings.TrimPrefix(path, "/v1/inbox/")
		msgs := f.inboxes[h]
		since, _ := strconv.Atoi(q.Get("since"))
		if since > len(msgs) {
			since = len(msgs)
		}
		fmt.Fprintf(w, `{"messages":[%s],"next_since":%d,"more":false}`, strings.Join(msgs[since:], ","), len(msgs))
	default:
		fail(404, "not_found")
	}
}

// Binding is a handle's binding as the fake keeps it, to serve again later.
type Binding = fakeBinding

// Binding returns handle's current binding (nil when none).
func (f *Fake) Binding(handle string) *Binding {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.bindings[handle]; b != nil {
		cp := *b
		return &cp
	}
	return nil
}

// ServeBinding answers lookups of handle with b (an earlier binding, say),
// with a fresh proof of b's leaf, whatever the log holds since.
func (f *Fake) ServeBinding(handle string, b *Binding) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.served[handle] = b
}

// Unserve ends Serve and ServeBinding for handle.
func (f *Fake) Unserve(handle string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.served, handle)
}

// Record is the record lookups of handle answer now, as a JSON object.
func (f *Fake) Record(handle string) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.lookupLocked(handle)
	if b == nil {
		return nil
	}
	return f.recordLocked(handle, b)
}

// ForceRotate logs a rotation of handle from old to new, both signing, and
// binds handle to new, whatever handle was bound to: a server that moves a
// handle with keys of its own.
func (f *Fake) ForceRotate(old, new *kez.Keys, handle string) int64 {
	return f.rotate(old, new, handle, true)
}

// Leaf is the data of leaf i.
func (f *Fake) Leaf(i int64) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leaves[i]
}

// B64 is standard base64, as the log's entries carry data.
func B64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// Proof is the "log" member (JSON) for leaf index in the current tree.
func (f *Fake) Proof(index int64) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := json.Marshal(f.logMember(index))
	if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

// RegisteredAt is the registered_at of handle's record (0 when unbound).
func (f *Fake) RegisteredAt(handle string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.lookupLocked(handle); b != nil {
		return b.registeredAt
	}
	return 0
}
