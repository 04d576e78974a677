package hub

import (
	"sync"
	"testing"
	"time"
)

// pending holds events taken from a subscription but not yet returned by recv.
var pending = map[*Subscription][]Event{}

// recv returns the subscription's next event, one at a time.
func recv(t *testing.T, s *Subscription) Event {
	t.Helper()
	if len(pending[s]) == 0 {
		select {
		case <-s.Ready():
			pending[s] = s.Take(pending[s])
		case <-time.After(2 * time.Second):
			t.Fatal("no event")
		}
	}
	if len(pending[s]) == 0 {
		t.Fatal("Ready without events")
	}
	ev := pending[s][0]
	pending[s] = pending[s][1:]
	return ev
}

func TestFanOutToEverySubscriberOfTheHandle(t *testing.T) {
	h := New()
	a1, a2, b := h.Subscribe("alice"), h.Subscribe("alice"), h.Subscribe("bob")
	h.Publish("alice", Event{Seq: 1, Data: []byte("x")})
	if ev := recv(t, a1); ev.Seq != 1 || string(ev.Data) != "x" {
		t.Fatalf("a1 got %+v", ev)
	}
	if ev := recv(t, a2); ev.Seq != 1 {
		t.Fatalf("a2 got %+v", ev)
	}
	select {
	case <-b.Ready():
		t.Fatalf("bob got alice's events %+v", b.Take(nil))
	default:
	}
	if n := h.Subscribers("alice"); n != 2 {
		t.Fatalf("alice has %d subscribers", n)
	}
	h.Unsubscribe(a1)
	<-a1.Done()
	if n := h.Subscribers(""); n != 2 {
		t.Fatalf("%d subscribers after unsubscribe", n)
	}
	h.Publish("nobody", Event{Seq: 9}) // no subscribers: a no-op
}

func TestOverflowDisconnectsOnlyTheSlowSubscriber(t *testing.T) {
	h := New()
	slow, fast := h.Subscribe("alice"), h.Subscribe("alice")
	for i := 1; i <= BufferSize+1; i++ {
		h.Publish("alice", Event{Seq: uint64(i)})
		if i <= BufferSize {
			if ev := recv(t, fast); ev.Seq != uint64(i) {
				t.Fatalf("fast got %d, want %d", ev.Seq, i)
			}
		}
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("slow subscriber not disconnected after overflow")
	}
	if !slow.Overflowed() {
		t.Fatal("Overflowed() = false")
	}
	// What it did receive is intact and in order: no silent skip.
	for i := 1; i <= BufferSize; i++ {
		if ev := recv(t, slow); ev.Seq != uint64(i) {
			t.Fatalf("slow got %d, want %d", ev.Seq, i)
		}
	}
	if fast.Overflowed() {
		t.Fatal("fast subscriber overflowed")
	}
	if ev := recv(t, fast); ev.Seq != BufferSize+1 {
		t.Fatalf("fast got %d", ev.Seq)
	}
	if n := h.Subscribers("alice"); n != 1 {
		t.Fatalf("%d subscribers left, want 1", n)
	}
}

// Take drains everything queued at once, and an idle subscription does not
// keep the buffer of a past burst.
func TestTakeDrainsAndForgetsBursts(t *testing.T) {
	h := New()
	s := h.Subscribe("alice")
	for i := 1; i <= 10; i++ {
		h.Publish("alice", Event{Seq: uint64(i)})
	}
	<-s.Ready()
	evs := s.Take(nil)
	if len(evs) != 10 || evs[0].Seq != 1 || evs[9].Seq != 10 {
		t.Fatalf("took %+v", evs)
	}
	if s.queue != nil {
		t.Fatalf("idle subscription keeps a queue of capacity %d", cap(s.queue))
	}
	select {
	case <-s.Ready():
		if evs := s.Take(nil); len(evs) != 0 {
			t.Fatalf("taken twice: %+v", evs)
		}
	default:
	}
	h.Publish("alice", Event{Seq: 11})
	if ev := recv(t, s); ev.Seq != 11 {
		t.Fatalf("got %d after a burst", ev.Seq)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	h := New()
	s := h.Subscribe("alice")
	h.Close()
	<-s.Done()
	if s.Overflowed() {
		t.Fatal("closed subscription reports overflow")
	}
	late := h.Subscribe("alice")
	<-late.Done()
	h.Publish("alice", Event{Seq: 1}) // must not panic or block
}

func TestEndAllKeepsTheHubOpen(t *testing.T) {
	h := New()
	a, b := h.Subscribe("alice"), h.Subscribe("bob")
	h.EndAll()
	<-a.Done()
	<-b.Done()
	if n := h.Subscribers(""); n != 0 {
		t.Fatalf("%d subscribers after EndAll", n)
	}
	again := h.Subscribe("alice")
	h.Publish("alice", Event{Seq: 7})
	if ev := recv(t, again); ev.Seq != 7 {
		t.Fatalf("got seq %d", ev.Seq)
	}
	select {
	case <-again.Done():
		t.Fatal("a subscription after EndAll ended")
	default:
	}
}

func TestConcurrentPublishSubscribe(t *testing.T) {
	h := New()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range 200 {
				h.Publish("alice", Event{Seq: uint64(i)})
			}
		}()
		go func() {
			defer wg.Done()
			for range 50 {
				s := h.Subscribe("alice")
				h.Unsubscribe(s)
			}
		}()
	}
	wg.Wait()
	if n := h.Subscribers(""); n != 0 {
		t.Fatalf("%d subscribers left", n)
	}
}

func BenchmarkPublish1000Subscribers(b *testing.B) {
	h := New()
	var subs []*Subscription
	for range 1000 {
		subs = append(subs, h.Subscribe("alice"))
	}
	ev := Event{Seq: 1, Data: make([]byte, 1024)}
	var buf []Event
	b.ResetTimer()
	for range b.N {
		h.Publish("alice", ev)
		for _, s := range subs {
			<-s.Ready()
			buf = s.Take(buf[:0])
		}
	}
}

func TestEndEndsOneHandle(t *testing.T) {
	h := New()
	a1, a2, b := h.Subscribe("alice"), h.Subscribe("alice"), h.Subscribe("bob")
	h.End("alice")
	for _, s := range []*Subscription{a1, a2} {
		select {
		case <-s.Done():
		default:
			t.Fatal("alice's subscription is still open")
		}
	}
	select {
	case <-b.Done():
		t.Fatal("bob's subscription ended")
	default:
	}
	if h.Subscribers("alice") != 0 || h.Subscribers("bob") != 1 {
		t.Fatalf("subscribers: alice %d, bob %d", h.Subscribers("alice"), h.Subscribers("bob"))
	}
	if later := h.Subscribe("alice"); h.Subscribers("alice") != 1 {
		t.Fatalf("a new subscription after End: %v", later)
	}
}
