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

// With every worker held by a push service that does not answer and the
// queue full, Notify still returns at once: the notification is dropped
// and counted, never waited for.
func TestQueueFullDrops(t *testing.T) {
	store, err := bolt.Open(filepath.Join(t.TempDir(), "chat.db"), bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
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
