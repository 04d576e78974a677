package storagetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/kezchat/kez/storage"
)

// testRemoteLogs: what a server keeps about another server's log (SPEC §8)
// is absent at first, kept per server name, replaced only through fn, left
// alone when fn fails, and gone after ForgetRemoteLog.
func testRemoteLogs(t *testing.T, open Opener) {
	s := open(t, nil)
	ctx := context.Background()
	if _, err := s.RemoteLog(ctx, "one.example"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("RemoteLog of an unknown server: %v, want ErrNotFound", err)
	}
	pin := func(cur storage.RemoteLog, found bool) (storage.RemoteLog, error) {
		if found {
			return cur, fmt.Errorf("already pinned to %s", cur.Key)
		}
		return storage.RemoteLog{Key: "one.example/kez-log+0a1b2c3d+AAAA", Checkpoint: "cp1", Updated: 1}, nil
	}
	got, err := s.UpdateRemoteLog(ctx, "one.example", pin)
	if err != nil || got.Server != "one.example" || got.Key == "" {
		t.Fatalf("first pin: %+v, %v", got, err)
	}
	if _, err := s.UpdateRemoteLog(ctx, "one.example", pin); err == nil || err.Error() != "already pinned to one.example/kez-log+0a1b2c3d+AAAA" {
		t.Fatalf("second pin: %v, want fn's own error", err)
	}
	_, err = s.UpdateRemoteLog(ctx, "one.example", func(cur storage.RemoteLog, found bool) (storage.RemoteLog, error) {
		if !found || cur.Checkpoint != "cp1" {
			t.Errorf("fn got %+v found=%v", cur, found)
		}
		cur.Forked, cur.Evidence = "inconsistent checkpoints", "cp1\n\ncp1'"
		return cur, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := s.RemoteLog(ctx, "one.example")
	if err != nil || rl.Forked != "inconsistent checkpoints" || rl.Evidence != "cp1\n\ncp1'" || rl.Checkpoint != "cp1" {
		t.Fatalf("after the fork: %+v, %v", rl, err)
	}
	if _, err := s.RemoteLog(ctx, "two.example"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("another server's log: %v, want ErrNotFound", err)
	}
	if err := s.ForgetRemoteLog(ctx, "one.example"); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetRemoteLog(ctx, "one.example"); err != nil {
		t.Fatalf("forgetting twice: %v", err)
	}
	if _, err := s.RemoteLog(ctx, "one.example"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("after forgetting: %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateRemoteLog(ctx, "one.example", pin); err != nil {
		t.Fatalf("pinning again after forgetting: %v", err)
	}
}

// testRemoteLogsConcurrent: concurrent updates are serialised, none lost.
func testRemoteLogsConcurrent(t *testing.T, open Opener) {
	s := open(t, nil)
	ctx := context.Background()
	const n = 8
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := s.UpdateRemoteLog(ctx, "one.example", func(cur storage.RemoteLog, _ bool) (storage.RemoteLog, error) {
				cur.Updated++
				return cur, nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	rl, err := s.RemoteLog(ctx, "one.example")
	if err != nil || rl.Updated != n {
		t.Fatalf("after %d concurrent increments: %+v, %v", n, rl, err)
	}
}
