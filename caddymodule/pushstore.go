package caddymodule

import (
	"context"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/bolt"
)

// The Web Push methods of lazyStore (SPEC §7): each opens the database
// first, as the others do.

func lazyCall[T any](l lazyStore, call func(*bolt.Store) (T, error)) (T, error) {
	s, err := l.get()
	if err != nil {
		var zero T
		return zero, err
	}
	return call(s)
}

func (l lazyStore) PushKey(ctx context.Context, fresh []byte) ([]byte, error) {
	return lazyCall(l, func(s *bolt.Store) ([]byte, error) { return s.PushKey(ctx, fresh) })
}

func (l lazyStore) PutPush(ctx context.Context, handle string, sub storage.PushSubscription, limit int) error {
	_, err := lazyCall(l, func(s *bolt.Store) (struct{}, error) { return struct{}{}, s.PutPush(ctx, handle, sub, limit) })
	return err
}

func (l lazyStore) DeletePush(ctx context.Context, handle, endpoint string) (bool, error) {
	return lazyCall(l, func(s *bolt.Store) (bool, error) { return s.DeletePush(ctx, handle, endpoint) })
}

func (l lazyStore) PushSubscriptions(ctx context.Context, handle string) ([]storage.PushSubscription, error) {
	return lazyCall(l, func(s *bolt.Store) ([]storage.PushSubscription, error) { return s.PushSubscriptions(ctx, handle) })
}
