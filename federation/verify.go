package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/gowebpki/jcs"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// DefaultCacheTTL is how long a verified binding is trusted (SPEC §8).
const DefaultCacheTTL = 10 * time.Minute

// maxCached bounds each cache; a full one starts over.
const maxCached = 10000

// RemoteLogs is the part of storage.Store the Verifier uses: the pinned log
// key and last checkpoint of each other server, shared by all instances.
type RemoteLogs interface {
	ForgetRemoteLog(ctx context.Context, server string) error
	RemoteLog(ctx context.Context, server string) (storage.RemoteLog, error)
	UpdateRemoteLog(ctx context.Context, server string, fn func(storage.RemoteLog, bool) (storage.RemoteLog, error)) (storage.RemoteLog, error)
}

// Config configures a Verifier.
type Config struct {
	Server       string            // this server's name
	Policy       Policy            // which servers are admitted
	Resolve      map[string]string // server name → API base, trusted (tests, private networks)
	AllowPrivate bool              // tests only: fetch from any address, over http too
	CacheTTL     time.Duration     // 0: DefaultCacheTTL
	Logs         RemoteLogs
	// Repin names servers whose kept pin is forgotten before it is first
	// used by this Verifier: an operator's way to clear a fork (SPEC §8).
	Repin []string
	Log   *slog.Logger     // warnings about lying servers; nil: discard
	Now   func() time.Time // nil: time.Now
}

// Verifier checks remote senders (SPEC §8). It is safe for concurrent use.
type Verifier struct {
	cfg   Config
	fetch *fetcher

	mu       sync.Mutex
	bindings map[string]cached[string] // address → verified primary
	bases    map[string]cached[base]   // server → its API base
	repin    map[string]bool           // servers of Config.Repin not yet forgotten
}

type cached[T any] struct {
	value T
	until time.Time
}

type base struct {
	url     string
	trusted bool // from Resolve
}

// New returns a Verifier.
func New(cfg Config) *Verifier {
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	resolve := map[string]string{}
	for s, b := range cfg.Resolve {
		resolve[kez.ASCIILower(s)] = trimSlash(b)
	}
	cfg.Resolve = resolve
	repin := map[string]bool{}
	for _, s := range cfg.Repin {
		repin[kez.ASCIILower(s)] = true
	}
	return &Verifier{cfg: cfg, fetch: newFetcher(resolve, cfg.AllowPrivate),
		bindings: map[string]cached[string]{}, bases: map[string]cached[base]{}, repin: repin}
}

// Resolve is the configured map of server names to API bases.
func (v *Verifier) Resolve() map[string]string { return v.cfg.Resolve }

// Policy is the configured policy.
func (v *Verifier) Policy() Policy { return v.cfg.Policy }

// Admit checks that users of server may write here: the policy, then the
// fetch rules (a name that resolves to a private address is refused), all
// without connecting to it. Errors are federation_refused.
func (v *Verifier) Admit(ctx context.Context, server string) error {
	if !ValidServerName(server) {
		return refused("%.80q is not a server name", server)
	}
	if !v.cfg.Policy.Admits(server) {
		return refused("%s does not accept users of %s", v.cfg.Server, server)
	}
	if v.cachedBase(server) != nil {
		return nil
	}
	return v.fetch.admit(ctx, server)
}

// VerifySender checks that handle@server is bound to primary at server:
// its record there, signed by its key(s), proven in a checkpoint of that
// server's pinned log key that is consistent with the last one kept.
// Errors are *kez.Error: sender_unverified (a lie, a fork, no such user),
// sender_unverifiable (cannot tell now) or federation_refused.
func (v *Verifier) VerifySender(ctx context.Context, handle, server, primary string) error {
	addr := kez.Address(handle, server)
	if v.cachedBinding(addr) == primary {
		return nil
	}
	if err := v.Admit(ctx, server); err != nil {
		return err
	}
	b, err := v.base(ctx, handle, server)
	if err != nil {
		return err
	}
	rl, err := v.pin(ctx, server, b)
	if err != nil {
		return err
	}
	logKey, err := kez.ParseLogKey(rl.Key, server)
	if err != nil {
		return fmt.Errorf("the pinned log key of %s: %w", server, err) // storage holds what pin checked
	}
	ans, err := v.fetch.get(ctx, b.url+"/v1/u/"+url.PathEscape(handle), b.trusted)
	if err != nil {
		return err
	}
	switch {
	case ans.status == 404:
		return unverified("%s has no user %s", server, handle)
	case ans.status >= 500:
		return unverifiable("%s answered %d to the lookup of %s", server, ans.status, addr)
	case ans.status != 200:
		return unverified("%s answered %d to the lookup of %s", server, ans.status, addr)
	}
	cp, err := v.checkRecord(ans.body, handle, server, primary, logKey)
	if err != nil {
		v.cfg.Log.Warn("federation: a record does not verify", "server", server, "address", addr, "error", err)
		return err
	}
	if err := v.consistent(ctx, server, b, rl, cp, logKey); err != nil {
		return err
	}
	v.remember(addr, primary)
	return nil
}

// checkRecord reads a record as SPEC §2.3 and §5 define it and checks it:
// it is handle's at server, bound to primary by its leaf (the rotation if
// there is one, else the registration: signed, for this handle and server),
// and the leaf is included in the checkpoint, signed by logKey.
func (v *Verifier) checkRecord(body []byte, handle, server, primary string, logKey note.Verifier) (*kez.Checkpoint, error) {
	f, err := kez.ExactMembers(body, []string{"handle", "server", "address", "primary", "registered_at", "registration", "log"}, []string{"rotation"})
	if err != nil {
		return nil, unverified("the record of %s is malformed: %v", kez.Address(handle, server), err)
	}
	var got struct{ handle, server, address, primary string }
	for name, dst := range map[string]*string{"handle": &got.handle, "server": &got.server, "address": &got.address, "primary": &got.primary} {
		if err := json.Unmarshal(f[name], dst); err != nil {
			return nil, unverified("the record's %s is not a string", name)
		}
	}
	addr := kez.Address(handle, server)
	switch {
	case got.handle != handle || got.server != server || got.address != addr:
		return nil, unverified("%s answered with the record of %s for %s", server, kez.Address(got.handle, got.server), addr)
	case got.primary != primary:
		return nil, unverified("%s is bound to another key at %s, not to the key that signed this message", addr, server)
	}
	leafObj := f["registration"]
	if f["rotation"] != nil {
		leafObj = f["rotation"]
	}
	leaf, err := jcs.Transform(leafObj)
	if err != nil {
		return nil, unverified("the record of %s: %v", addr, err)
	}
	proof, err := kez.ParseLogProof(f["log"])
	if err != nil {
		return nil, unverified("the record of %s: %v", addr, err)
	}
	entry, err := kez.ParseLogEntry(proof.Index, leaf, server)
	if err != nil {
		return nil, unverified("the record of %s: %v", addr, err)
	}
	if entry.Kind == kez.DeleteType || entry.Handle != handle || entry.Primary != primary {
		return nil, unverified("the record of %s: its signed %s is for %s and key %s", addr, entry.Kind, entry.Handle, entry.Primary)
	}
	cp, err := kez.OpenCheckpoint([]byte(proof.Checkpoint), logKey)
	if err != nil {
		return nil, unverified("the record of %s: %v", addr, err)
	}
	if err := cp.VerifyInclusion(proof.Index, leaf, proof.Inclusion); err != nil {
		return nil, unverified("the record of %s is not in %s's binding log: %v", addr, server, err)
	}
	return cp, nil
}

// consistent checks cp against the checkpoint kept for server (one log,
// never rewritten: same size, same root; otherwise a consistency proof
// from the server) and keeps the larger. A failure is a fork: the server
// stays refused, with the evidence, until an operator forgets its pin.
func (v *Verifier) consistent(ctx context.Context, server string, b base, rl storage.RemoteLog, cp *kez.Checkpoint, logKey note.Verifier) error {
	if rl.Checkpoint != "" {
		kept, err := kez.OpenCheckpoint([]byte(rl.Checkpoint), logKey)
		if err != nil {
			return fmt.Errorf("the kept checkpoint of %s: %w", server, err)
		}
		older, newer := kept, cp
		if cp.Size < kept.Size {
			older, newer = cp, kept
		}
		var proof []tlog.Hash
		if older.Size != newer.Size {
			if proof, err = v.consistencyProof(ctx, server, b, older.Size, newer.Size); err != nil {
				return err
			}
		}
		if err := kez.VerifyConsistency(older, newer, proof); err != nil {
			return v.forked(ctx, server, kept, cp, err)
		}
		if cp.Size <= kept.Size {
			return nil
		}
	}
	_, err := v.cfg.Logs.UpdateRemoteLog(ctx, server, func(cur storage.RemoteLog, found bool) (storage.RemoteLog, error) {
		if !found || cur.Key != rl.Key || cur.Forked != "" {
			return cur, errPinChanged
		}
		if cur.Checkpoint != rl.Checkpoint && cur.Checkpoint != "" {
			// Another instance kept a checkpoint meanwhile: keep the
			// larger; the next sender checks the two against each other.
			if c, err := kez.OpenCheckpoint([]byte(cur.Checkpoint), logKey); err == nil && c.Size >= cp.Size {
				return cur, nil
			}
		}
		cur.Checkpoint, cur.Updated = cp.Note, v.cfg.Now().Unix()
		return cur, nil
	})
	if errors.Is(err, errPinChanged) {
		return unverifiable("the pin of %s changed meanwhile; try again", server)
	}
	return err
}

var errPinChanged = errors.New("the remote log pin changed")

// consistencyProof fetches the proof that server's log of size m is a
// prefix of its log of size n. A refusal is not yet a fork: only a proof
// that fails to verify is evidence.
func (v *Verifier) consistencyProof(ctx context.Context, server string, b base, m, n int64) ([]tlog.Hash, error) {
	ans, err := v.fetch.get(ctx, b.url+"/v1/log/consistency?old="+strconv.FormatInt(m, 10)+"&new="+strconv.FormatInt(n, 10), b.trusted)
	if err != nil {
		return nil, err
	}
	switch {
	case ans.status >= 500 || ans.status == 429:
		return nil, unverifiable("%s answered %d to a consistency proof", server, ans.status)
	case ans.status != 200:
		return nil, unverified("%s answered %d to a consistency proof from checkpoint %d to %d", server, ans.status, m, n)
	}
	proof, err := kez.ParseConsistency(ans.body)
	if err != nil {
		return nil, unverified("%s's consistency proof: %v", server, err)
	}
	return proof, nil
}

// forked keeps the evidence of a fork and refuses the server from now on.
func (v *Verifier) forked(ctx context.Context, server string, kept, shown *kez.Checkpoint, why error) error {
	v.cfg.Log.Warn("federation: a server showed a binding log inconsistent with the one it showed before; its users are refused until an operator clears its pin",
		"server", server, "kept", kept.String(), "shown", shown.String(), "error", why)
	_, err := v.cfg.Logs.UpdateRemoteLog(ctx, server, func(cur storage.RemoteLog, found bool) (storage.RemoteLog, error) {
		if !found || cur.Forked != "" {
			return cur, nil
		}
		cur.Forked = why.Error()
		cur.Evidence = kept.Note + "\n" + shown.Note
		cur.Updated = v.cfg.Now().Unix()
		return cur, nil
	})
	if err != nil {
		return err
	}
	v.forgetServer(server)
	return unverified("%s showed a binding log inconsistent with what it showed before (%v); it is refused until this server's operator clears its pin", server, why)
}

// pin returns what is kept about server's log, pinning its log key at
// first contact. A server caught forking stays refused.
func (v *Verifier) pin(ctx context.Context, server string, b base) (storage.RemoteLog, error) {
	v.mu.Lock()
	forget := v.repin[server]
	v.mu.Unlock()
	if forget {
		if err := v.cfg.Logs.ForgetRemoteLog(ctx, server); err != nil {
			return storage.RemoteLog{}, err
		}
		v.mu.Lock()
		delete(v.repin, server)
		v.mu.Unlock()
		v.cfg.Log.Warn("federation: forgot the pinned log key and checkpoint of a server, as federation_repin says; it is pinned afresh now (remove the federation_repin line)", "server", server)
	}
	rl, err := v.cfg.Logs.RemoteLog(ctx, server)
	if err == nil {
		if rl.Forked != "" {
			return rl, unverified("%s showed a forked binding log (%s); it is refused until this server's operator clears its pin", server, rl.Forked)
		}
		return rl, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return rl, err
	}
	ans, err := v.fetch.get(ctx, b.url+"/v1/log/key", b.trusted)
	if err != nil {
		return rl, err
	}
	if ans.status != 200 {
		if ans.status >= 500 {
			return rl, unverifiable("%s answered %d for its log key", server, ans.status)
		}
		return rl, unverified("%s answered %d for its log key", server, ans.status)
	}
	vkey := string(bytes.TrimSpace(ans.body))
	if _, err := kez.ParseLogKey(vkey, server); err != nil {
		return rl, unverified("%s serves no usable log key: %v", server, err)
	}
	return v.cfg.Logs.UpdateRemoteLog(ctx, server, func(cur storage.RemoteLog, found bool) (storage.RemoteLog, error) {
		if found { // another instance pinned first: its pin holds
			return cur, nil
		}
		return storage.RemoteLog{Key: vkey, Updated: v.cfg.Now().Unix()}, nil
	})
}

// base finds server's API base: federation_resolve, else the urn:kez:api
// link of its WebFinger answer for handle, else https://<server>.
func (v *Verifier) base(ctx context.Context, handle, server string) (base, error) {
	if u, ok := v.cfg.Resolve[server]; ok {
		return base{url: u, trusted: true}, nil
	}
	if b := v.cachedBase(server); b != nil {
		return *b, nil
	}
	fallback := base{url: "https://" + server}
	q := url.Values{"resource": {"acct:" + kez.Address(handle, server)}}
	ans, err := v.fetch.get(ctx, fallback.url+"/.well-known/webfinger?"+q.Encode(), false)
	if err != nil {
		return base{}, err
	}
	b := fallback
	switch {
	case ans.status == 200:
		if href := apiLink(ans.body); href != "" {
			u, err := v.fetch.checkBase(href)
			if err != nil {
				return base{}, refused("%s: %v", server, err)
			}
			b.url = u
		}
	case ans.status >= 300 && ans.status < 400:
		return base{}, unverified("%s redirects its WebFinger answer; redirects are not followed", server)
	case ans.status >= 500:
		return base{}, unverifiable("%s answered %d to WebFinger", server, ans.status)
	}
	v.mu.Lock()
	v.trim(len(v.bases), func() { clear(v.bases) })
	v.bases[server] = cached[base]{value: b, until: v.cfg.Now().Add(v.cfg.CacheTTL)}
	v.mu.Unlock()
	return b, nil
}

// apiLink is the href of the urn:kez:api link of a JRD, or "".
func apiLink(jrd []byte) string {
	var doc struct {
		Links []struct {
			Rel  string `json:"rel"`
			Href string `json:"href"`
		} `json:"links"`
	}
	if json.Unmarshal(jrd, &doc) != nil {
		return ""
	}
	for _, l := range doc.Links {
		if l.Rel == "urn:kez:api" {
			return l.Href
		}
	}
	return ""
}

func (v *Verifier) cachedBase(server string) *base {
	v.mu.Lock()
	defer v.mu.Unlock()
	if c, ok := v.bases[server]; ok && v.cfg.Now().Before(c.until) {
		return &c.value
	}
	return nil
}

func (v *Verifier) cachedBinding(addr string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if c, ok := v.bindings[addr]; ok && v.cfg.Now().Before(c.until) {
		return c.value
	}
	return ""
}

func (v *Verifier) remember(addr, primary string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.trim(len(v.bindings), func() { clear(v.bindings) })
	v.bindings[addr] = cached[string]{value: primary, until: v.cfg.Now().Add(v.cfg.CacheTTL)}
}

// trim empties a cache that reached maxCached (called with mu held): the
// entries are short-lived, and refetching them is the worst it costs.
func (v *Verifier) trim(n int, empty func()) {
	if n >= maxCached {
		empty()
	}
}

// forgetServer drops every cached binding of server's users.
func (v *Verifier) forgetServer(server string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for addr := range v.bindings {
		if _, s := kez.SplitAddress(addr); s == server {
			delete(v.bindings, addr)
		}
	}
	delete(v.bases, server)
}

func trimSlash(s string) string {
	for len(s) > 0 && s[len(s)-1] == '/' {
		s = s[:len(s)-1]
	}
	return s
}
