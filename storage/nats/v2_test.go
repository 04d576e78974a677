package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

// pair opens two stores on the same streams, each connected to another
// node of c (as two Caddy instances behind a load balancer).
func pair(t *testing.T, c *natstest.Cluster, prefix string, opts Options, notify1, notify2 storage.Notify) (*Store, *Store) {
	t.Helper()
	o1, o2 := opts, opts
	o1.URLs, o1.Prefix, o1.Replicas, o1.Notify = []string{c.URL(0)}, prefix, len(c.Servers), notify1
	o2.URLs, o2.Prefix, o2.Replicas, o2.Notify = []string{c.URL(1 % len(c.Servers))}, prefix, len(c.Servers), notify2
	return open(t, o1), open(t, o2)
}

func stranger(to string, i int) storage.Delivery { return storagetest.Delivery(to, i) }

// The v2 rules hold with two servers on one 3-node cluster (R3 streams)
// sending at once: each limit exactly, one fresh copy of a delivery, a
// signature used once, contact changes seen by both.
func TestTwoServersV2(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	t.Run("RequestLimits", func(t *testing.T) { twoServersRequestLimits(t, c) })
	t.Run("MaxInbox", func(t *testing.T) { twoServersMaxInbox(t, c) })
	t.Run("Duplicates", func(t *testing.T) { twoServersDuplicates(t, c) })
	t.Run("DedupeAfterTheMsgIDWindow", func(t *testing.T) { dedupeAfterWindow(t, c) })
	t.Run("RecordLostWithItsServer", func(t *testing.T) { recordLost(t, c) })
	t.Run("Once", func(t *testing.T) { twoServersOnce(t, c) })
	t.Run("Contacts", func(t *testing.T) { twoServersContacts(t, c) })
}

func twoServersRequestLimits(t *testing.T, c *natstest.Cluster) {
	s1, s2 := pair(t, c, "lim2", Options{}, nil, nil)
	storagetest.Register(t, s1, "alice", 1)
	lim := storage.Limits{RequestLimit: 3, MaxRequests: 10}
	const strangers, each = 8, 6
	var mu sync.Mutex
	stored := map[string]int{}
	var wg sync.WaitGroup
	for i := range strangers {
		for j := range each {
			wg.Go(func() {
				s := []*Store{s1, s2}[(i+j)%2]
				d := stranger("alice", 10+i)
				m, fresh, err := s.Append(context.Background(), d, lim)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && fresh && m.Request:
					stored[d.From]++
				case errors.Is(err, storage.ErrRequestLimit):
				default:
					t.Errorf("fresh=%v request=%v %v", fresh, m.Request, err)
				}
			})
		}
	}
	wg.Wait()
	total := 0
	for from, n := range stored {
		if n > lim.RequestLimit {
			t.Errorf("%s stored %d requests, limit %d", from, n, lim.RequestLimit)
		}
		total += n
	}
	if total != lim.MaxRequests {
		t.Fatalf("%d requests stored through two servers, max_requests %d", total, lim.MaxRequests)
	}
	for _, s := range []*Store{s1, s2} {
		if msgs, _, err := s.Read(context.Background(), "alice", 0, 100); err != nil || len(msgs) != lim.MaxRequests {
			t.Fatalf("read %d, %v", len(msgs), err)
		}
	}
}

func twoServersMaxInbox(t *testing.T, c *natstest.Cluster) {
	race := func(s1, s2 *Store, handle string, n int, lim storage.Limits) (stored int) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := range n {
			wg.Go(func() {
				_, fresh, err := []*Store{s1, s2}[i%2].Append(context.Background(), delivery(handle, []byte(`{}`)), lim)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && fresh:
					stored++
				case !errors.Is(err, storage.ErrInboxFull):
					t.Errorf("fresh=%v %v", fresh, err)
				}
			})
		}
		wg.Wait()
		return stored
	}
	// Counted here (no cap on the stream).
	s1, s2 := pair(t, c, "cap2a", Options{}, nil, nil)
	storagetest.Register(t, s1, "alice", 1)
	accept(t, s1, "alice")
	if n := race(s1, s2, "alice", 24, storage.Limits{MaxInbox: 5}); n != 5 {
		t.Fatalf("counted: %d stored, max_inbox 5", n)
	}
	// The stream's per-subject cap: the common case, no count.
	s3, s4 := pair(t, c, "cap2b", Options{MaxInbox: 5}, nil, nil)
	storagetest.Register(t, s3, "alice", 1)
	accept(t, s3, "alice")
	// A stranger's requests leave the cap to contacts (SPEC §2.5).
	for i := range 3 {
		if _, _, err := s4.Append(context.Background(), stranger("alice", 20+i), storage.Limits{MaxInbox: 5, RequestLimit: 3}); err != nil {
			t.Fatal(err)
		}
	}
	if n := race(s3, s4, "alice", 24, storage.Limits{MaxInbox: 5}); n != 5 {
		t.Fatalf("stream cap: %d stored, max_inbox 5", n)
	}
}

func twoServersDuplicates(t *testing.T, c *natstest.Cluster) {
	var n1, n2 recorder
	n1, n2 = *newRecorder(), *newRecorder()
	s1, s2 := pair(t, c, "dup2", Options{}, n1.notify, n2.notify)
	storagetest.Register(t, s1, "alice", 1)
	accept(t, s1, "alice")
	for _, tc := range []struct {
		name string
		d    storage.Delivery
		lim  storage.Limits
	}{
		{"contact", delivery("alice", []byte(`{"kind":"contact"}`)), storage.Limits{}},
		{"contact, counted", delivery("alice", []byte(`{"kind":"counted"}`)), storage.Limits{MaxInbox: 100}},
		{"request", stranger("alice", 7), storage.Limits{RequestLimit: 1}},
		{"request, unlimited", stranger("alice", 8), storage.Limits{}},
	} {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var receipts []storage.Message
		fresh := 0
		for i := range 32 {
			wg.Go(func() {
				m, f, err := []*Store{s1, s2}[i%2].Append(context.Background(), tc.d, tc.lim)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
					return
				}
				if f {
					fresh++
				}
				receipts = append(receipts, m)
			})
		}
		wg.Wait()
		if fresh != 1 {
			t.Fatalf("%s: %d of 32 copies through two servers were fresh", tc.name, fresh)
		}
		for _, m := range receipts {
			if m.Seq != receipts[0].Seq || m.ReceivedAt != receipts[0].ReceivedAt {
				t.Fatalf("%s: receipts differ: %d at %d, %d at %d", tc.name, m.Seq, m.ReceivedAt, receipts[0].Seq, receipts[0].ReceivedAt)
			}
		}
	}
	msgs, _, err := s2.Read(context.Background(), "alice", 0, 100)
	if err != nil || len(msgs) != 4 {
		t.Fatalf("%d stored, %v", len(msgs), err)
	}
	for _, r := range []*recorder{&n1, &n2} {
		waitFor(t, 10*time.Second, "the feeds", func() bool { return r.count("alice") >= 4 })
		time.Sleep(50 * time.Millisecond)
		if r.count("alice") != 4 {
			t.Fatalf("notified %d times", r.count("alice"))
		}
	}
}

// Beyond the stream's dedupe window (2 min; 1 s here) the idempotency
// records answer, acknowledged messages included, through either server.
func dedupeAfterWindow(t *testing.T, c *natstest.Cluster) {
	ctx := context.Background()
	s1, s2 := pair(t, c, "win2", Options{}, nil, nil)
	storagetest.Register(t, s1, "alice", 1)
	accept(t, s1, "alice")
	st, err := s1.js.Stream(ctx, s1.InboxStream())
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.Duplicates = time.Second
	if _, err := s1.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	lim := storage.Limits{RequestLimit: 1}
	type sent struct {
		name string
		d    storage.Delivery
		m    storage.Message
	}
	all := []*sent{
		{name: "acked", d: delivery("alice", []byte(`{"n":1}`))},
		{name: "contact", d: delivery("alice", []byte(`{"n":2}`))},
		{name: "request", d: stranger("alice", 5)},
	}
	for _, x := range all {
		m, fresh, err := s1.Append(ctx, x.d, lim)
		if err != nil || !fresh {
			t.Fatalf("%s: fresh=%v %v", x.name, fresh, err)
		}
		x.m = m
		if x.name == "acked" {
			if _, err := s1.Ack(ctx, "alice", m.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(2500 * time.Millisecond) // the stream forgets the message ids
	for _, x := range all {
		m, fresh, err := s2.Append(ctx, x.d, lim)
		if err != nil || fresh || m.Seq != x.m.Seq || m.ReceivedAt != x.m.ReceivedAt {
			t.Fatalf("%s resent after the window: seq %d at %d fresh=%v %v; want %d at %d", x.name, m.Seq, m.ReceivedAt, fresh, err, x.m.Seq, x.m.ReceivedAt)
		}
	}
	msgs, _, err := s2.Read(ctx, "alice", 0, 100)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("%d stored, %v", len(msgs), err)
	}
}

// The server that stored a message dies before writing its record, and
// the recipient acknowledges it: a resend within the dedupe window,
// through another server, is still a copy (the stream knows its id).
func recordLost(t *testing.T, c *natstest.Cluster) {
	ctx := context.Background()
	s1, s2 := pair(t, c, "lost2", Options{}, nil, nil)
	storagetest.Register(t, s1, "alice", 1)
	accept(t, s1, "alice")
	d := delivery("alice", []byte(`{}`))
	m, fresh, err := s1.Append(ctx, d, storage.Limits{})
	if err != nil || !fresh {
		t.Fatalf("fresh=%v %v", fresh, err)
	}
	s1.waitRecords(ctx, "")
	if n, err := s1.purge(ctx, s1.doneSubj("alice", idemKey(d.From, d.Sig)), 0); err != nil || n != 1 {
		t.Fatalf("removing the record: %d %v", n, err)
	}
	if _, err := s1.Ack(ctx, "alice", m.Seq); err != nil {
		t.Fatal(err)
	}
	again, fresh, err := s2.Append(ctx, d, storage.Limits{})
	if err != nil || fresh || again.Seq != m.Seq {
		t.Fatalf("resend: seq %d fresh=%v %v; want seq %d", again.Seq, fresh, err, m.Seq)
	}
	if msgs, _, err := s2.Read(ctx, "alice", 0, 10); err != nil || len(msgs) != 0 {
		t.Fatalf("stored again: %d %v", len(msgs), err)
	}
	// The record is written again: later copies get the same receipt.
	s2.waitRecords(ctx, "")
	if rec, err := s2.findRecord(ctx, "alice", idemKey(d.From, d.Sig)); err != nil || rec == nil || !rec.done || rec.msgSeq != m.Seq || rec.at != again.ReceivedAt {
		t.Fatalf("record: %+v %v", rec, err)
	}
}

func twoServersOnce(t *testing.T, c *natstest.Cluster) {
	ctx := context.Background()
	s1, s2 := pair(t, c, "once2", Options{}, nil, nil)
	until := time.Now().Add(time.Minute)
	key := [32]byte{1, 2, 3}
	if fresh, err := s1.Once(ctx, key, until); err != nil || !fresh {
		t.Fatalf("first use on s1: %v %v", fresh, err)
	}
	if fresh, err := s2.Once(ctx, key, until); err != nil || fresh {
		t.Fatalf("second use, on s2: %v %v", fresh, err)
	}
	for round := range 3 {
		key := [32]byte{9, byte(round)}
		var wg sync.WaitGroup
		var mu sync.Mutex
		fresh := 0
		for i := range 32 {
			wg.Go(func() {
				f, err := []*Store{s1, s2}[i%2].Once(ctx, key, until)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Error(err)
				}
				if f {
					fresh++
				}
			})
		}
		wg.Wait()
		if fresh != 1 {
			t.Fatalf("round %d: %d of 32 uses through two servers were fresh", round, fresh)
		}
	}
	// Memory is bounded by what is unexpired: every key has a TTL.
	st, err := s1.js.Stream(ctx, s1.UsedStream())
	if err != nil {
		t.Fatal(err)
	}
	if !st.CachedInfo().Config.AllowMsgTTL {
		t.Fatal("the used bucket does not allow per-key TTLs")
	}
	m, err := st.GetLastMsgForSubject(ctx, s1.usedSubj+fmt.Sprintf("%x", key))
	if err != nil {
		t.Fatal(err)
	}
	if ttl, _ := strconv.Atoi(m.Header.Get(hdrTTL)); ttl < 59 || ttl > 61 {
		t.Fatalf("TTL %q for a key used until a minute from now", m.Header.Get(hdrTTL))
	}
}

func twoServersContacts(t *testing.T, c *natstest.Cluster) {
	ctx := context.Background()
	s1, s2 := pair(t, c, "con2", Options{}, nil, nil)
	storagetest.Register(t, s1, "alice", 1)
	storagetest.Register(t, s1, "bob", 2)
	lim := storage.Limits{RequestLimit: 5}
	// Accepted through s1: s2 knows at once (its list is looked up for a
	// sender it has not seen accepted).
	send := func(s *Store, d storage.Delivery) storage.Message {
		t.Helper()
		m, fresh, err := s.Append(ctx, d, lim)
		if err != nil || !fresh {
			t.Fatalf("fresh=%v %v", fresh, err)
		}
		return m
	}
	send(s2, stranger("alice", 3)) // s2 caches alice's lists
	if err := s1.SetContact(ctx, "alice", storagetest.Primary(3), storage.Accept); err != nil {
		t.Fatal(err)
	}
	if m := send(s2, stranger("alice", 3)); m.Request {
		t.Fatal("accepted through s1, a request through s2")
	}
	// Blocked through s1: refused through s2 at once.
	send(s2, stranger("alice", 4))
	if err := s1.SetContact(ctx, "alice", storagetest.Primary(4), storage.Block); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s2.Append(ctx, stranger("alice", 4), lim); !errors.Is(err, storage.ErrBlocked) {
		t.Fatalf("blocked through s1, through s2: %v", err)
	}
	if got, err := s2.Contacts(ctx, "alice"); err != nil || len(got.Accepted) != 1 || len(got.Blocked) != 1 {
		t.Fatalf("Contacts through s2: %+v %v", got, err)
	}
	// Unaccepted through s1: s2's cache has it within the watch's delay.
	if err := s1.SetContact(ctx, "alice", storagetest.Primary(3), storage.Unaccept); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "s2's watch", func() bool {
		c := s2.cachedContactsOf("alice")
		return c != nil && !c.accepted[storagetest.Primary(3)]
	})
	if m := send(s2, stranger("alice", 3)); !m.Request {
		t.Fatal("unaccepted through s1, not a request through s2")
	}
	// Read through either: the messages of 3 accepted before are messages.
	for _, s := range []*Store{s1, s2} {
		msgs, _, err := s.Read(ctx, "alice", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var flags []bool
		for _, m := range msgs {
			if m.From == storagetest.Primary(3) {
				flags = append(flags, m.Request)
			}
		}
		if fmt.Sprint(flags) != "[false false true]" {
			t.Fatalf("request flags of 3: %v", flags)
		}
	}
	// Writing through s2 accepts in one's own inbox; s1 sees it.
	d := stranger("bob", 1)
	d.SenderHandle, d.ToPrimary = "alice", storagetest.Primary(2)
	send(s2, d)
	if got, err := s1.Contacts(ctx, "alice"); err != nil || fmt.Sprint(got.Accepted) != fmt.Sprint([]string{storagetest.Primary(2)}) {
		t.Fatalf("alice's contacts through s1 after writing to bob through s2: %+v %v", got, err)
	}
}

// A v1 inbox stream (subjects <prefix>.inbox.<handle>, no headers but the
// received_at) moves to v2's subjects on open; its messages read as
// before, first, with From from the envelope, never as requests; they
// count against max_inbox and go with Ack.
func TestV1Inboxes(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	nc, err := natsio.Connect(c.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "old_inbox", Subjects: []string{"old.inbox.*"}, Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew,
		MaxMsgsPerSubject: 5, DiscardNewPerSubject: true, Duplicates: dedupeWindow, AllowDirect: true, DenyDelete: true,
	}); err != nil {
		t.Fatal(err)
	}
	sender := storagetest.Primary(7)
	var v1 []uint64
	for i := range 3 {
		m := natsio.NewMsg("old.inbox.alice")
		m.Data = fmt.Appendf(nil, `{"v":1,"from":%q,"i":%d}`, sender, i)
		m.Header.Set(hdrReceivedAt, strconv.Itoa(1000+i))
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		v1 = append(v1, ack.Sequence)
	}
	s := open(t, Options{URLs: c.URLs(), Prefix: "old", MaxInbox: 5})
	storagetest.Register(t, s, "alice", 1)
	cfg := inboxStreamConfig(t, s)
	if len(cfg.Subjects) != 2 || cfg.Metadata[metaV1LastSeq] != strconv.FormatUint(v1[2], 10) {
		t.Fatalf("after open: subjects %v, metadata %v", cfg.Subjects, cfg.Metadata)
	}
	accept(t, s, "alice")
	lim := storage.Limits{MaxInbox: 5}
	var v2 []uint64
	for range 2 {
		m, fresh, err := s.Append(ctx, delivery("alice", []byte(`{"v":2}`)), lim)
		if err != nil || !fresh || m.Seq <= v1[2] {
			t.Fatalf("seq %d fresh=%v %v", m.Seq, fresh, err)
		}
		v2 = append(v2, m.Seq)
	}
	// 3 + 2: full, though the stream's cap on the v2 subject is not reached.
	if _, _, err := s.Append(ctx, delivery("alice", []byte(`{}`)), lim); !errors.Is(err, storage.ErrInboxFull) {
		t.Fatalf("sixth message: %v", err)
	}
	var got []storage.Message
	for since := uint64(0); ; {
		page, more, err := s.Read(ctx, "alice", since, 2)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, page...)
		if !more {
			break
		}
		since = page[len(page)-1].Seq
	}
	want := append(append([]uint64{}, v1...), v2...)
	if len(got) != len(want) {
		t.Fatalf("read %d messages, want %d", len(got), len(want))
	}
	for i, m := range got {
		if m.Seq != want[i] || m.Request {
			t.Fatalf("message %d: seq %d request=%v, want seq %d", i, m.Seq, m.Request, want[i])
		}
		if i < 3 && (m.From != sender || m.ReceivedAt != int64(1000+i)) {
			t.Fatalf("v1 message %d: from %q at %d", i, m.From, m.ReceivedAt)
		}
	}
	if n, err := s.Ack(ctx, "alice", v1[1]); err != nil || n != 2 {
		t.Fatalf("ack of two v1 messages = %d, %v", n, err)
	}
	if _, _, err := s.Append(ctx, delivery("alice", []byte(`{}`)), lim); err != nil {
		t.Fatalf("after ack: %v", err)
	}
	if n, err := s.Ack(ctx, "alice", ^uint64(0)); err != nil || n != 4 {
		t.Fatalf("ack of all = %d, %v", n, err)
	}
	if last, err := s.v1LastOf(ctx, "alice"); err != nil || last != 0 {
		t.Fatalf("v1 messages left after acknowledging all: %d %v", last, err)
	}
	// A store opened afterwards keeps the mark and reads nothing old.
	s2 := open(t, Options{URLs: c.URLs(), Prefix: "old", MaxInbox: 5})
	if msgs, more, err := s2.Read(ctx, "alice", 0, 10); err != nil || len(msgs) != 0 || more {
		t.Fatalf("read after ack: %d %v %v", len(msgs), more, err)
	}
}
