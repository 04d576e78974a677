// Package hub is the in-process pub/sub behind inbox streams: per-handle
// subscriber sets with bounded buffers. Publishing never blocks; a subscriber
// that falls a full buffer behind is disconnected, never silently skipped, and
// resumes from storage.
package hub

import (
	"slices"
	"sync"
)

// BufferSize is how many undelivered events a subscriber may hold.
const BufferSize = 64

// Event is one message for a handle: its seq and the pre-encoded JSON of the
// message object, shared by every subscriber.
type Event struct {
	Seq  uint64
	Data []byte
}

// Subscription receives a handle's events until Done is closed: wait for
// Ready, then Take what is queued. An idle subscription holds no buffer, so
// thousands of quiet streams cost little; the queue is allocated as events
// arrive and dropped again once it has been taken.
type Subscription struct {
	ready  chan struct{} // holds a token while events may be queued
	done   chan struct{}
	once   sync.Once
	handle string
	reason string

	mu    sync.Mutex
	queue []Event // at most BufferSize
}

// Ready receives when events may be queued; call Take then.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Take appends the queued events to dst, oldest first, and empties the
// queue. After the subscription ended, it still returns what was queued.
func (s *Subscription) Take(dst []Event) []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	dst = append(dst, s.queue...)
	if cap(s.queue) > 4 {
		s.queue = nil // a burst is over: do not keep its buffer while idle
	} else {
		clear(s.queue)
		s.queue = s.queue[:0]
	}
	return dst
}

// offer queues ev unless the queue is full.
func (s *Subscription) offer(ev Event) bool {
	s.mu.Lock()
	full := len(s.queue) >= BufferSize
	if !full {
		s.queue = append(s.queue, ev)
	}
	s.mu.Unlock()
	if !full {
		select {
		case s.ready <- struct{}{}:
		default: // a token is already waiting
		}
	}
	return !full
}

// Done is closed when the subscription ends: overflow, Unsubscribe or Close.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Overflowed reports whether the subscription ended because its buffer filled.
func (s *Subscription) Overflowed() bool {
	select {
	case <-s.done:
		return s.reason == reasonOverflow
	default:
		return false
	}
}

const (
	reasonOverflow = "overflow"
	reasonClosed   = "closed"
)

func (s *Subscription) end(reason string) {
	s.once.Do(func() {
		s.reason = reason
		close(s.done)
	})
}

// Hub fans events out to subscribers.
type Hub struct {
	mu     sync.RWMutex
	subs   map[string][]*Subscription // a handle's few subscriptions
	closed bool
}

// New returns an empty hub.
func New() *Hub { return &Hub{subs: map[string][]*Subscription{}} }

// Subscribe starts receiving events for handle. On a closed hub the
// subscription is already done.
func (h *Hub) Subscribe(handle string) *Subscription {
	s := &Subscription{ready: make(chan struct{}, 1), done: make(chan struct{}), handle: handle}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		s.end(reasonClosed)
		return s
	}
	h.subs[handle] = append(h.subs[handle], s)
	return s
}

// Unsubscribe ends s and forgets it.
func (h *Hub) Unsubscribe(s *Subscription) {
	h.mu.Lock()
	h.remove(s)
	h.mu.Unlock()
	s.end(reasonClosed)
}

func (h *Hub) remove(s *Subscription) {
	set := h.subs[s.handle]
	i := slices.Index(set, s)
	if i < 0 {
		return
	}
	if len(set) == 1 {
		delete(h.subs, s.handle)
		return
	}
	// Publish reads the slice only under the read lock and remove runs
	// under the write lock, so it is edited in place.
	h.subs[s.handle] = slices.Delete(set, i, i+1)
}

// Publish hands ev to every subscriber of handle without blocking. Callers
// publish in commit order, so each subscriber sees seqs ascending.
func (h *Hub) Publish(handle string, ev Event) {
	var full []*Subscription
	h.mu.RLock()
	for _, s := range h.subs[handle] {
		if !s.offer(ev) {
			full = append(full, s)
		}
	}
	h.mu.RUnlock()
	if len(full) == 0 {
		return
	}
	h.mu.Lock()
	for _, s := range full {
		h.remove(s)
	}
	h.mu.Unlock()
	for _, s := range full {
		s.end(reasonOverflow)
	}
}

// Subscribers counts the open subscriptions of handle ("" counts all).
func (h *Hub) Subscribers(handle string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if handle != "" {
		return len(h.subs[handle])
	}
	n := 0
	for _, set := range h.subs {
		n += len(set)
	}
	return n
}

// Close ends every subscription; later ones end at once.
func (h *Hub) Close() { h.endAll(true) }

// EndAll ends every current subscription but stays open for new ones:
// when the events can no longer be trusted to arrive (say, a shared
// backend lost its connection), streams end and their clients resume
// from storage.
func (h *Hub) EndAll() { h.endAll(false) }

func (h *Hub) endAll(close bool) {
	h.mu.Lock()
	subs := h.subs
	h.subs = map[string][]*Subscription{}
	h.closed = h.closed || close
	h.mu.Unlock()
	for _, set := range subs {
		for _, s := range set {
			s.end(reasonClosed)
		}
	}
}

// End ends every current subscription of handle: its binding changed
// (rotation, deletion), so streams opened with the old key must not go on
// (SPEC §2.7). New subscriptions are unaffected.
func (h *Hub) End(handle string) {
	h.mu.Lock()
	set := h.subs[handle]
	delete(h.subs, handle)
	h.mu.Unlock()
	for _, s := range set {
		s.end(reasonClosed)
	}
}
