// Package hub is the in-process pub/sub behind inbox streams: per-handle
// subscriber sets with bounded buffers. Publishing never blocks; a subscriber
// that falls a full buffer behind is disconnected, never silently skipped, and
// resumes from storage.
package hub

import "sync"

// BufferSize is how many undelivered events a subscriber may hold.
const BufferSize = 64

// Event is one message for a handle: its seq and the pre-encoded JSON of the
// message object, shared by every subscriber.
type Event struct {
	Seq  uint64
	Data []byte
}

// Subscription receives a handle's events until Done is closed.
type Subscription struct {
	C      <-chan Event
	c      chan Event
	done   chan struct{}
	once   sync.Once
	handle string
	reason string
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
	subs   map[string]map[*Subscription]struct{}
	closed bool
}

// New returns an empty hub.
func New() *Hub { return &Hub{subs: map[string]map[*Subscription]struct{}{}} }

// Subscribe starts receiving events for handle. On a closed hub the
// subscription is already done.
func (h *Hub) Subscribe(handle string) *Subscription {
	c := make(chan Event, BufferSize)
	s := &Subscription{C: c, c: c, done: make(chan struct{}), handle: handle}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		s.end(reasonClosed)
		return s
	}
	set := h.subs[handle]
	if set == nil {
		set = map[*Subscription]struct{}{}
		h.subs[handle] = set
	}
	set[s] = struct{}{}
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
	if set := h.subs[s.handle]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(h.subs, s.handle)
		}
	}
}

// Publish hands ev to every subscriber of handle without blocking. Callers
// publish in commit order, so each subscriber sees seqs ascending.
func (h *Hub) Publish(handle string, ev Event) {
	var full []*Subscription
	h.mu.RLock()
	for s := range h.subs[handle] {
		select {
		case s.c <- ev:
		default:
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
func (h *Hub) Close() {
	h.mu.Lock()
	subs := h.subs
	h.subs = map[string]map[*Subscription]struct{}{}
	h.closed = true
	h.mu.Unlock()
	for _, set := range subs {
		for s := range set {
			s.end(reasonClosed)
		}
	}
}
