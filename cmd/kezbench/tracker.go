package main

import (
	"bytes"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kezchat/kez/client"
)

// tracker checks exactly-once delivery: every accepted send is identified
// by (recipient, seq) from the server's receipt and must arrive on the
// recipient's stream once, with the bytes that were sent. Deliveries may be
// seen before their receipt (the server pushes as soon as the commit is
// durable, while the 201 is still on its way), so either side may come first.
type tracker struct {
	mu   sync.Mutex
	msgs map[msgKey]*msgState
	// alreadyStored counts receipts of envelopes the server had already
	// (200 to a resend by the client after a lost answer).
	alreadyStored atomic.Int64
}

type msgKey struct {
	user int
	seq  uint64
}

type msgState struct {
	sent       []byte // the envelope as posted (nil until the receipt is seen)
	got        []byte // the first delivered envelope, kept only until sent is known
	same       bool   // the first delivery had the bytes that were sent
	start      time.Time
	accepted   time.Time
	delivered  time.Time
	deliveries int
}

func newTracker() *tracker { return &tracker{msgs: map[msgKey]*msgState{}} }

func (t *tracker) state(k msgKey) *msgState {
	st := t.msgs[k]
	if st == nil {
		st = &msgState{}
		t.msgs[k] = st
	}
	return st
}

// accepted records a 201 for env sent to u, posted at start.
func (t *tracker) accepted(u *user, seq uint64, env []byte, start, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.state(msgKey{u.idx, seq})
	st.sent, st.start, st.accepted = env, start, at
	if st.deliveries > 0 {
		st.same, st.got = bytes.Equal(st.sent, st.got), nil
	}
}

// delivered records a message arriving on u's stream.
func (t *tracker) delivered(u *user, m client.Message, at time.Time) {
	for {
		last := u.lastSeq.Load()
		if m.Seq <= last || u.lastSeq.CompareAndSwap(last, m.Seq) {
			break
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.state(msgKey{u.idx, m.Seq})
	st.deliveries++
	if st.deliveries == 1 {
		st.delivered = at
		// Compare now when the receipt came first; otherwise keep the bytes
		// until it comes. Holding every envelope to the end would make the
		// tool's heap grow by the whole run (a GiB in scenario 4).
		if st.sent != nil {
			st.same = bytes.Equal(st.sent, m.Envelope)
		} else {
			st.got = m.Envelope
		}
	}
}

// pending counts accepted messages not yet delivered.
func (t *tracker) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, st := range t.msgs {
		if st.sent != nil && st.deliveries == 0 {
			n++
		}
	}
	return n
}

// waitDelivered waits until every accepted message arrived or within passed.
func (t *tracker) waitDelivered(within time.Duration) {
	deadline := time.Now().Add(within)
	for t.pending() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// Delivery is the exactly-once verdict of one scenario.
type Delivery struct {
	Accepted    int `json:"accepted"`     // 201s seen
	ExactlyOnce int `json:"exactly_once"` // accepted, delivered once with the same bytes
	Missing     int `json:"missing"`      // accepted, never delivered
	Duplicated  int `json:"duplicated"`   // delivered more than once
	Corrupted   int `json:"corrupted"`    // delivered bytes differ from those sent
	Unexpected  int `json:"unexpected"`   // delivered without a 201 for it
	// EarlyDeliveries arrived before the sender had read its 201; their
	// delivery latency counts as 0.
	EarlyDeliveries int `json:"early_deliveries"`
}

// OK reports exactly-once delivery of everything accepted.
func (d Delivery) OK() bool {
	return d.Accepted == d.ExactlyOnce && d.Missing+d.Duplicated+d.Corrupted+d.Unexpected == 0
}

// verdict checks every message and returns the delivery latencies
// (accepted → delivered).
func (t *tracker) verdict() (Delivery, []time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var d Delivery
	lat := make([]time.Duration, 0, len(t.msgs))
	for _, st := range t.msgs {
		if st.sent == nil {
			d.Unexpected++
			continue
		}
		d.Accepted++
		switch {
		case st.deliveries == 0:
			d.Missing++
			continue
		case st.deliveries > 1:
			d.Duplicated++
		case !st.same:
			d.Corrupted++
		default:
			d.ExactlyOnce++
		}
		l := st.delivered.Sub(st.accepted)
		if l < 0 {
			d.EarlyDeliveries++
			l = 0
		}
		lat = append(lat, l)
	}
	return d, lat
}

// Latency summarizes durations in milliseconds.
type Latency struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	// Nearest rank: the smallest value with at least p% of samples at or below it.
	at := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		i = min(max(i, 0), len(s)-1)
		return ms(s[i])
	}
	return Latency{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ms(s[len(s)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
