package bolt

import (
	"context"
	"encoding/json"

	"go.etcd.io/bbolt"

	"github.com/kezchat/kez/storage"
)

// Web Push (SPEC §7): the VAPID key is meta "push_key"; a handle's
// subscriptions are one JSON list in the "push" bucket (made on first
// use, so older files need no migration), deleted with the handle.
var (
	bucketPush  = []byte("push")
	metaPushKey = []byte("push_key")
)

// PushKey returns the stored VAPID key, storing fresh if there is none.
func (s *Store) PushKey(_ context.Context, fresh []byte) ([]byte, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	var key []byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		key = append([]byte(nil), tx.Bucket(bucketMeta).Get(metaPushKey)...)
		return nil
	})
	if err != nil || len(key) > 0 {
		return key, mapErr(err)
	}
	err = s.db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(metaPushKey); v != nil { // never replace a key browsers subscribed with
			key = append([]byte(nil), v...)
			return nil
		}
		key = fresh
		return meta.Put(metaPushKey, fresh)
	})
	return key, mapErr(err)
}

// PutPush stores sub in handle's list.
func (s *Store) PutPush(_ context.Context, handle string, sub storage.PushSubscription, limit int) error {
	return s.changePush(handle, func(list []storage.PushSubscription) ([]storage.PushSubscription, bool) {
		return storage.MergePush(list, sub, limit), true
	})
}

// DeletePush removes handle's subscription to endpoint.
func (s *Store) DeletePush(_ context.Context, handle, endpoint string) (bool, error) {
	found := false
	err := s.changePush(handle, func(list []storage.PushSubscription) ([]storage.PushSubscription, bool) {
		list, found = storage.WithoutPush(list, endpoint)
		return list, found
	})
	return found, err
}

// PushSubscriptions returns handle's list.
func (s *Store) PushSubscriptions(_ context.Context, handle string) ([]storage.PushSubscription, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	var list []storage.PushSubscription
	err := s.db.View(func(tx *bbolt.Tx) (err error) {
		list, err = pushList(tx, handle)
		return err
	})
	return list, mapErr(err)
}

// changePush rewrites handle's list with change, which reports whether it
// changed anything; ErrNotFound for an unregistered handle.
func (s *Store) changePush(handle string, change func([]storage.PushSubscription) ([]storage.PushSubscription, bool)) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketHandles).Get([]byte(handle)) == nil {
			return storage.ErrNotFound
		}
		list, err := pushList(tx, handle)
		if err != nil {
			return err
		}
		list, changed := change(list)
		if !changed {
			return nil
		}
		b, err := tx.CreateBucketIfNotExists(bucketPush)
		if err != nil {
			return err
		}
		if len(list) == 0 {
			return b.Delete([]byte(handle))
		}
		raw, err := json.Marshal(list)
		if err != nil {
			return err
		}
		return b.Put([]byte(handle), raw)
	})
	return mapErr(err)
}

func pushList(tx *bbolt.Tx, handle string) ([]storage.PushSubscription, error) {
	b := tx.Bucket(bucketPush)
	if b == nil {
		return nil, nil
	}
	raw := b.Get([]byte(handle))
	if raw == nil {
		return nil, nil
	}
	var list []storage.PushSubscription
	return list, json.Unmarshal(raw, &list)
}

// deletePush drops handle's subscriptions, in Delete's transaction: a
// later owner of the handle must not wake the old one's devices.
func deletePush(tx *bbolt.Tx, handle []byte) error {
	if b := tx.Bucket(bucketPush); b != nil {
		return b.Delete(handle)
	}
	return nil
}
