package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

// recorder is a Notify that remembers what it was told, per inbox.
type recorder struct {
	mu   sync.Mutex
	seqs map[string][]uint64
	envs map[uint64]string
}

func newRecorder() *recorder {
	return &recorder{seqs: map[string][]uint64{}, envs: map[uint64]string{}}
}

func (r *recorder) notify(handle string, m storage.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seqs[handle] = append(r.seqs[handle], m.Seq)
	r.envs[m.Seq] = string(m.Envelope)
}

func (r *recorder) count(handle string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seqs[handle])
}

// delivery is a message to handle from storagetest's fill sender (whom
// accept makes a contact of handle), with a fresh sig.
func delivery(handle string, env []byte) storage.Delivery {
	return storage.Delivery{To: handle, From: storagetest.Primary(storagetest.FillSender), Sig: storagetest.Sig(), Envelope: env}
}

// accept makes storagetest's fill sender a contact of handle.
func accept(t testing.TB, s storage.Store, handle string) {
	t.Helper()
	if err := s.SetContact(context.Background(), handle, storagetest.Primary(storagetest.FillSender), storage.Accept); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func open(t *testing.T, opts Options) *Store {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Two servers on one cluster: what one stores, the other is notified of,
// in order, and can read right after (even from a lagging follower).
func TestFeedAcrossServers(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx := context.Background()
	rec1, rec2 := newRecorder(), newRecorder()
	// Each server talks to a different node, as behind a load balancer.
	s1 := open(t, Options{URLs: []string{c.URL(0)}, Prefix: "feed", Replicas: 3, Notify: rec1.notify})
	s2 := open(t, Options{URLs: []string{c.URL(1)}, Prefix: "feed", Replicas: 3, Notify: rec2.notify})
	storagetest.Register(t, s1, "alice", 1)
	accept(t, s1, "alice")
	if _, err := s2.Lookup(ctx, "alice"); err != nil {
		t.Fatalf("registered through s1, looked up through s2: %v", err)
	}
	const n = 60
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := []*Store{s1, s2}[i%2]
			if _, _, err := s.Append(ctx, delivery("alice", fmt.Appendf(nil, `{"i":%d}`, i)), storage.Limits{}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "both feeds", func() bool { return rec1.count("alice") == n && rec2.count("alice") == n })
	for _, r := range []*recorder{rec1, rec2} {
		r.mu.Lock()
		seqs := r.seqs["alice"]
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Fatalf("notified out of order: %v", seqs)
			}
		}
		r.mu.Unlock()
	}
	// Whatever was notified is readable through either server at once.
	for _, s := range []*Store{s1, s2} {
		msgs, more, err := s.Read(ctx, "alice", 0, 500)
		if err != nil || more || len(msgs) != n {
			t.Fatalf("read %d messages, more=%v, %v", len(msgs), more, err)
		}
	}
	// A message sent through s1 reaches s2's feed with its envelope.
	m, _, err := s1.Append(ctx, delivery("alice", []byte(`{"last":true}`)), storage.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the last message on s2", func() bool {
		rec2.mu.Lock()
		defer rec2.mu.Unlock()
		return rec2.envs[m.Seq] == `{"last":true}`
	})
	msgs, _, err := s2.Read(ctx, "alice", m.Seq-1, 10)
	if err != nil || len(msgs) != 1 || msgs[0].ReceivedAt != m.ReceivedAt {
		t.Fatalf("read back %+v (want received_at %d), %v", msgs, m.ReceivedAt, err)
	}
}

// A follower answering a direct get may lag; Read then completes from the
// leader up to what the feed has delivered.
func TestReadCompletesFromLeaderWhenBehindTheFeed(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	s := open(t, Options{URLs: c.URLs(), Prefix: "stale", Notify: func(string, storage.Message) {}})
	storagetest.Register(t, s, "alice", 1)
	accept(t, s, "alice")
	var seqs []uint64
	for range 3 {
		m, _, err := s.Append(ctx, delivery("alice", []byte(`{}`)), storage.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, m.Seq)
	}
	waitFor(t, 5*time.Second, "the feed", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.seen["alice"] == seqs[2]
	})
	// Pretend the feed has seen one more than the (single) replica has:
	// Read must ask the leader and then trust it, not loop.
	s.mu.Lock()
	s.seen["alice"] = seqs[2] + 5
	s.mu.Unlock()
	msgs, more, err := s.Read(ctx, "alice", seqs[0], 10)
	if err != nil || more || len(msgs) != 2 || msgs[1].Seq != seqs[2] {
		t.Fatalf("Read = %+v more=%v %v", msgs, more, err)
	}
	s.mu.Lock()
	verified := s.verified["alice"]
	s.mu.Unlock()
	if verified != seqs[2]+5 {
		t.Fatalf("verified = %d", verified)
	}
	// A page that fills up from the leader still reports more.
	s.mu.Lock()
	s.seen["alice"], s.verified["alice"] = seqs[2]+9, 0
	s.mu.Unlock()
	if msgs, more, err := s.Read(ctx, "alice", 0, 2); err != nil || !more || len(msgs) != 2 {
		t.Fatalf("Read(limit 2) = %d messages, more=%v, %v", len(msgs), more, err)
	}
}

// No server at the URL: Open does not fail or wait, every call fails at
// once, and the store works as soon as a server appears.
func TestUnreachableFailsFastThenRecovers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	start := time.Now()
	s := open(t, Options{URLs: []string{url}, Prefix: "down", Timeout: 2 * time.Second})
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Open took %s with no server", d)
	}
	ctx := context.Background()
	start = time.Now()
	if err := s.Ping(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ping = %v", err)
	}
	if _, err := s.Lookup(ctx, "alice"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Lookup = %v", err)
	}
	if _, _, err := s.Append(ctx, delivery("alice", []byte(`{}`)), storage.Limits{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append = %v", err)
	}
	if d := time.Since(start); d > time.Second { // not the 2 s Timeout each
		t.Fatalf("failing calls took %s", d)
	}
	c := natstest.RunOnPort(t, port)
	_ = c
	waitFor(t, 10*time.Second, "the connection", func() bool { return s.Ping(ctx) == nil })
	storagetest.Register(t, s, "alice", 1)
}

// Provision from several servers with different limits: the streams take
// the largest and never shrink.
func TestStreamLimitsNeverShrink(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	var logs strings.Builder
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil))
	big := open(t, Options{URLs: c.URLs(), Prefix: "lim", Retention: 2 * time.Hour, MaxInbox: 100, Logger: log})
	if err := big.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	small := open(t, Options{URLs: c.URLs(), Prefix: "lim", Retention: time.Hour, MaxInbox: 10, Logger: log})
	if err := small.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := inboxStreamConfig(t, small)
	if cfg.MaxAge != 2*time.Hour || cfg.MaxMsgsPerSubject != 100 || !cfg.DiscardNewPerSubject || cfg.Discard != jetstream.DiscardNew {
		t.Fatalf("after a smaller config: max_age %s, per subject %d, discard new per subject %v", cfg.MaxAge, cfg.MaxMsgsPerSubject, cfg.DiscardNewPerSubject)
	}
	logMu.Lock()
	warned := strings.Contains(logs.String(), "max_age 2h0m0s (asked 1h0m0s)") && strings.Contains(logs.String(), "max_msgs_per_subject 100 (asked 10)")
	logMu.Unlock()
	if !warned {
		t.Errorf("no warning naming the kept limits:\n%s", logs.String())
	}
	// A larger configuration raises them (on reload: Reconfigure).
	if err := small.Reconfigure(ctx, 1, 3*time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	cfg = inboxStreamConfig(t, small)
	if cfg.MaxAge != 3*time.Hour || cfg.MaxMsgsPerSubject != -1 || cfg.DiscardNewPerSubject {
		t.Fatalf("after a larger config: max_age %s, per subject %d", cfg.MaxAge, cfg.MaxMsgsPerSubject)
	}
	// Unlimited stays unlimited.
	if err := big.Reconfigure(ctx, 1, 2*time.Hour, 100); err != nil {
		t.Fatal(err)
	}
	if cfg = inboxStreamConfig(t, big); cfg.MaxMsgsPerSubject != -1 || cfg.MaxAge != 3*time.Hour {
		t.Fatalf("a limit replaced unlimited: %+v", cfg)
	}
	reg, err := big.js.Stream(ctx, big.RegistryStream())
	if err != nil {
		t.Fatal(err)
	}
	if rc := reg.CachedInfo().Config; !rc.AllowAtomicPublish || rc.MaxMsgsPerSubject != 1 || !rc.AllowDirect {
		t.Fatalf("registry stream: %+v", rc)
	}
	if _, err := big.js.KeyValue(ctx, "lim_registry"); err != nil {
		t.Fatalf("the registry is not usable as a KV bucket: %v", err)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func inboxStreamConfig(t *testing.T, s *Store) jetstream.StreamConfig {
	t.Helper()
	st, err := s.js.Stream(context.Background(), s.InboxStream())
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().Config
}

// The server-side cap: exact under concurrent sends, 507 after it.
func TestStreamCapUnderConcurrency(t *testing.T) {
	c := natstest.Run(t)
	s := open(t, Options{URLs: c.URLs(), Prefix: "cap", MaxInbox: 5})
	storagetest.Register(t, s, "alice", 1)
	accept(t, s, "alice")
	if stored, full := appendRace(t, s, "alice", 12, 5); stored != 5 || full != 7 {
		t.Fatalf("stored %d, refused %d", stored, full)
	}
	// A lower per-call cap is exact too, even when racing.
	storagetest.Register(t, s, "bob", 2)
	accept(t, s, "bob")
	if stored, full := appendRace(t, s, "bob", 8, 3); stored != 3 || full != 5 {
		t.Fatalf("per-call cap 3: stored %d, refused %d", stored, full)
	}
}

// appendRace sends n messages to handle at once and counts the outcomes.
func appendRace(t *testing.T, s *Store, handle string, n, maxInbox int) (stored, full int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := s.Append(context.Background(), delivery(handle, []byte(`{}`)), storage.Limits{MaxInbox: maxInbox})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				stored++
			case errors.Is(err, storage.ErrInboxFull):
				full++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	return stored, full
}

// Keys fit the NATS key charset whatever the primary or invite holds.
func TestRegistryKeys(t *testing.T) {
	if got := primaryKey("ed25519:" + strings.Repeat("ab", 32)); got != "p.ed25519."+strings.Repeat("ab", 32) {
		t.Errorf("primaryKey = %s", got)
	}
	for _, k := range []string{primaryKey("x:y z"), primaryKey("nocolon"), inviteKey("a b.c*>/\x00é")} {
		for _, r := range k {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_=./", r)) {
				t.Errorf("key %q has %q", k, r)
			}
		}
	}
	c := natstest.Run(t)
	ctx := context.Background()
	s := open(t, Options{URLs: c.URLs(), Prefix: "keys"})
	if _, created, err := s.Register(ctx, storage.Record{Handle: "alice", Primary: "odd primary:*>"}, "a b.c*>"); err != nil || !created {
		t.Fatalf("register: %v %v", created, err)
	}
	if rec, err := s.LookupPrimary(ctx, "odd primary:*>"); err != nil || rec.Handle != "alice" {
		t.Fatalf("LookupPrimary = %+v %v", rec, err)
	}
	if _, _, err := s.Register(ctx, storage.Record{Handle: "bob", Primary: storagetest.Primary(2)}, "a b.c*>"); !errors.Is(err, storage.ErrInviteUsed) {
		t.Fatalf("second use of the invite: %v", err)
	}
	for _, h := range []string{"a.b", "*", ">", "", "a b"} {
		if _, err := s.Lookup(ctx, h); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Lookup(%q) = %v", h, err)
		}
		if _, _, err := s.Append(ctx, delivery(h, []byte(`{}`)), storage.Limits{}); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Append(%q) = %v", h, err)
		}
	}
}

// SPEC §2.6: a seq is never reused, not even after acknowledgement and a
// restart of both KEZ chat and NATS.
func TestRestartKeepsDataAndSeqs(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	opts := Options{URLs: c.URLs(), Prefix: "restart"}
	s := open(t, opts)
	storagetest.Register(t, s, "alice", 1)
	seqs := storagetest.Fill(t, s, "alice", 3, 0)
	last := seqs[len(seqs)-1]
	if n, err := s.Ack(ctx, "alice", last); err != nil || n != 3 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	c.Restart(t, 0)
	s = open(t, opts)
	if rec, err := s.Lookup(ctx, "alice"); err != nil || rec.Primary != storagetest.Primary(1) {
		t.Fatalf("after restart: %+v %v", rec, err)
	}
	m, _, err := s.Append(ctx, delivery("alice", []byte(`{}`)), storage.Limits{})
	if err != nil || m.Seq <= last {
		t.Fatalf("after restart and ack, seq %d (last %d): %v", m.Seq, last, err)
	}
}
