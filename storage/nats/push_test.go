package nats

import (
	"bytes"
	"context"
	"testing"

	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

// Two servers on one cluster use one VAPID key and see each other's
// subscriptions (SPEC §7: one key for all instances).
func TestPushSharedByServers(t *testing.T) {
	ctx := context.Background()
	c := natstest.Run(t)
	a := open(t, Options{URLs: c.URLs(), Name: "a"})
	b := open(t, Options{URLs: c.URLs(), Name: "b"})
	ka, err := a.PushKey(ctx, []byte("key-of-a"))
	if err != nil {
		t.Fatal(err)
	}
	kb, err := b.PushKey(ctx, []byte("key-of-b"))
	if err != nil || !bytes.Equal(ka, kb) || string(ka) != "key-of-a" {
		t.Fatalf("keys %q and %q (%v): want both the first stored", ka, kb, err)
	}
	storagetest.Register(t, a, "alice", 1)
	if err := a.PutPush(ctx, "alice", storagetest.PushSub(1, 1), 10); err != nil {
		t.Fatal(err)
	}
	if err := b.PutPush(ctx, "alice", storagetest.PushSub(2, 2), 10); err != nil {
		t.Fatal(err)
	}
	list, err := a.PushSubscriptions(ctx, "alice")
	if err != nil || len(list) != 2 {
		t.Fatalf("a sees %+v, %v", list, err)
	}
	if found, err := a.DeletePush(ctx, "alice", storagetest.PushSub(2, 0).Endpoint); err != nil || !found {
		t.Fatalf("a deletes b's subscription: %v %v", found, err)
	}
	if list, err := b.PushSubscriptions(ctx, "alice"); err != nil || len(list) != 1 {
		t.Fatalf("b sees %+v, %v", list, err)
	}
}
