package push

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/pushtest"
	"github.com/kezchat/kez/storage/bolt"
	"github.com/kezchat/kez/storage/storagetest"
)

func openStore(t *testing.T) *bolt.Store {
	t.Helper()
	store, err := bolt.Open(filepath.Join(t.TempDir(), "chat.db"), bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

// With every worker held by a push service that does not answer and the
// queue full, Notify still returns at once: the notification is dropped
// and counted, never waited for.
func TestQueueFullDrops(t *testing.T) {
	store := openStore(t)
	service := pushtest.New(t)
	hold := make(chan struct{})
	defer close(hold)
	var mu sync.Mutex
	counts := map[string]int{}
	s := New(store, Options{Contact: "mailto:ops@kez.test", AllowPrivate: true, Queue: 1,
		Counted: func(o string) { mu.Lock(); counts[o]++; mu.Unlock() }})
	defer s.Close()
	// More held devices than workers: every worker ends up waiting.
	for i := range Concurrency + 2 {
		h := "user" + string(rune('a'+i))
		storagetest.Register(t, store, h, i)
		sub := service.Subscribe(h, pushtest.Behavior{Hold: hold})
		if err := store.PutPush(context.Background(), h, sub, MaxSubscriptions); err != nil {
			t.Fatal(err)
		}
		s.Notify(h, 1)
	}
	if _, ok := service.Wait(time.Minute, func(p []pushtest.Push) bool { return len(p) >= Concurrency }); !ok {
		t.Fatal("the workers never reached the push service")
	}
	for range 10 {
		s.Notify("usera", 2)
	}
	mu.Lock()
	defer mu.Unlock()
	if counts["dropped"] == 0 {
		t.Fatalf("outcomes %v: a full queue dropped nothing", counts)
	}
	if n := service.MaxInFlight(); n > Concurrency {
		t.Fatalf("%d pushes in flight", n)
	}
}

// Configure applies new options to a running sender: here, a sender told
// that private endpoints are no longer allowed stops pushing to one.
func TestConfigure(t *testing.T) {
	store := openStore(t)
	service := pushtest.New(t)
	storagetest.Register(t, store, "alice", 1)
	if err := store.PutPush(context.Background(), "alice", service.Subscribe("phone", pushtest.Behavior{}), MaxSubscriptions); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	counts := map[string]int{}
	opts := Options{Contact: "mailto:ops@kez.test", AllowPrivate: true, Interval: time.Millisecond,
		Counted: func(o string) { mu.Lock(); counts[o]++; mu.Unlock() }}
	s := New(store, opts)
	defer s.Close()
	quiet := func() {
		for !s.Quiet() {
			time.Sleep(time.Millisecond)
		}
	}
	s.Notify("alice", 1)
	quiet()
	opts.AllowPrivate = false
	s.Configure(opts)
	if s.AllowPrivate() {
		t.Fatal("Configure did not apply")
	}
	s.Notify("alice", 2)
	quiet()
	mu.Lock()
	defer mu.Unlock()
	if n := len(service.Pushes()); n != 1 || counts["sent"] != 1 || counts["failed"] != 1 {
		t.Fatalf("%d pushes, outcomes %v: want the second refused", n, counts)
	}
}
