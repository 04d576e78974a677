package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/storage"
)

// pushTests are the Web Push cases (SPEC §7): the VAPID key and the
// subscriptions.
func pushTests() map[string]func(*testing.T, Opener) {
	return map[string]func(*testing.T, Opener){
		"PushKeyStoredOnce":             testPushKey,
		"PushSubscriptionsPerHandle":    testPushSubscriptions,
		"PushSubscriptionsCapped":       testPushCap,
		"PushSubscriptionsGoWithHandle": testPushDeleteHandle,
		"PushConcurrentPuts":            testPushConcurrent,
	}
}

// withUsers opens a store with the handles registered (keys 1, 2, ...).
func withUsers(t *testing.T, open Opener, handles ...string) storage.Store {
	s := open(t, nil)
	for i, h := range handles {
		Register(t, s, h, i+1)
	}
	return s
}

// PushSub is a subscription to a distinct endpoint for tests.
func PushSub(i int, created int64) storage.PushSubscription {
	return storage.PushSubscription{Endpoint: fmt.Sprintf("https://push.example/%d", i),
		P256dh: fmt.Sprintf("key-%d", i), Auth: fmt.Sprintf("auth-%d", i), Created: created}
}

func pushEndpoints(t testing.TB, s storage.Store, handle string) []string {
	t.Helper()
	list, err := s.PushSubscriptions(context.Background(), handle)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range list {
		out = append(out, p.Endpoint)
	}
	return out
}

// The first key stored is the key, whoever asks later with another one.
func testPushKey(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	first, err := s.PushKey(ctx, []byte("first-key-32-bytes-long-enough!!"))
	if err != nil || string(first) != "first-key-32-bytes-long-enough!!" {
		t.Fatalf("PushKey on an empty store = %q, %v", first, err)
	}
	again, err := s.PushKey(ctx, []byte("second"))
	if err != nil || !bytes.Equal(again, first) {
		t.Fatalf("PushKey with a key stored = %q, %v; want the stored one", again, err)
	}
}

func testPushSubscriptions(t *testing.T, open Opener) {
	ctx := context.Background()
	s := withUsers(t, open, "alice", "bob")
	if err := s.PutPush(ctx, "nobody", PushSub(1, 1), 10); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("PutPush for an unknown handle: %v", err)
	}
	if got := pushEndpoints(t, s, "alice"); len(got) != 0 {
		t.Fatalf("a new handle has subscriptions %v", got)
	}
	for i := 1; i <= 3; i++ {
		if err := s.PutPush(ctx, "alice", PushSub(i, int64(i)), 10); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutPush(ctx, "bob", PushSub(1, 9), 10); err != nil { // one browser, two accounts
		t.Fatal(err)
	}
	// Putting an endpoint again replaces its keys and keeps its place.
	changed := PushSub(1, 50)
	changed.P256dh, changed.Auth = "new-key", "new-auth"
	if err := s.PutPush(ctx, "alice", changed, 10); err != nil {
		t.Fatal(err)
	}
	list, err := s.PushSubscriptions(ctx, "alice")
	if err != nil || len(list) != 3 {
		t.Fatalf("alice's subscriptions %+v, %v", list, err)
	}
	if list[0] != (storage.PushSubscription{Endpoint: changed.Endpoint, P256dh: "new-key", Auth: "new-auth", Created: 1}) {
		t.Fatalf("replaced subscription %+v", list[0])
	}
	if found, err := s.DeletePush(ctx, "alice", PushSub(2, 0).Endpoint); err != nil || !found {
		t.Fatalf("DeletePush: %v, %v", found, err)
	}
	if found, err := s.DeletePush(ctx, "alice", PushSub(2, 0).Endpoint); err != nil || found {
		t.Fatalf("DeletePush again: %v, %v", found, err)
	}
	if _, err := s.DeletePush(ctx, "nobody", PushSub(2, 0).Endpoint); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("DeletePush for an unknown handle: %v", err)
	}
	want := []string{PushSub(1, 0).Endpoint, PushSub(3, 0).Endpoint}
	if got := pushEndpoints(t, s, "alice"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("alice's endpoints %v, want %v", got, want)
	}
	if got := pushEndpoints(t, s, "bob"); fmt.Sprint(got) != fmt.Sprint(want[:1]) {
		t.Fatalf("bob's endpoints %v", got)
	}
	for _, e := range want {
		_, _ = s.DeletePush(ctx, "alice", e)
	}
	if got := pushEndpoints(t, s, "alice"); len(got) != 0 {
		t.Fatalf("all deleted, still %v", got)
	}
}

// Beyond the cap the oldest subscription goes.
func testPushCap(t *testing.T, open Opener) {
	ctx := context.Background()
	s := withUsers(t, open, "alice")
	for i := range 12 {
		if err := s.PutPush(ctx, "alice", PushSub(i, int64(100+i)), 10); err != nil {
			t.Fatal(err)
		}
	}
	got := pushEndpoints(t, s, "alice")
	if len(got) != 10 || got[0] != PushSub(2, 0).Endpoint || got[9] != PushSub(11, 0).Endpoint {
		t.Fatalf("capped list %v", got)
	}
}

// A deleted handle's devices are forgotten: whoever registers the handle
// after the cooldown must not wake them.
func testPushDeleteHandle(t *testing.T, open Opener) {
	ctx := context.Background()
	s := withUsers(t, open, "alice", "bob")
	for _, h := range []string{"alice", "bob"} {
		if err := s.PutPush(ctx, h, PushSub(1, 1), 10); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Delete(ctx, "alice", Primary(1), deletion("alice", Primary(1)), time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := pushEndpoints(t, s, "alice"); len(got) != 0 {
		t.Fatalf("a deleted handle keeps subscriptions %v", got)
	}
	if err := s.PutPush(ctx, "alice", PushSub(2, 2), 10); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("PutPush after the deletion: %v", err)
	}
	if got := pushEndpoints(t, s, "bob"); len(got) != 1 {
		t.Fatalf("bob's subscriptions after alice's deletion: %v", got)
	}
}

// Concurrent puts from several devices all land.
func testPushConcurrent(t *testing.T, open Opener) {
	ctx := context.Background()
	s := withUsers(t, open, "alice")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() { errs <- s.PutPush(ctx, "alice", PushSub(i, int64(i)), 10) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := pushEndpoints(t, s, "alice"); len(got) != 8 {
		t.Fatalf("%d of 8 concurrent subscriptions stored: %v", len(got), got)
	}
}
