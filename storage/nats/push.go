package nats

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kezchat/kez/storage"
)

// Web Push (SPEC §7) lives in the registry bucket: push.key is the VAPID
// key (create-only, so every server uses the first one stored), and
// push.s.<handle> a handle's subscriptions as one JSON list, changed by
// compare-and-set on its revision. Deleting the handle deletes the list
// (purgeInbox).
const pushKeyName = "push.key"

func pushListKey(handle string) string { return "push.s." + handle }

// PushKey returns the stored VAPID key, storing fresh if none is stored.
func (s *Store) PushKey(ctx context.Context, fresh []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	data, err := s.getKey(ctx, pushKeyName, false)
	if !isNotFound(err) {
		return data, err
	}
	_, err = s.publish(ctx, s.claim(pushKeyName, fresh))
	if err == nil {
		return fresh, nil
	}
	if !isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
		return nil, err
	}
	// Another server stored one first (or this one did and the answer
	// was lost): the stored one is the key.
	return s.getKey(ctx, pushKeyName, true)
}

// PutPush stores sub in handle's list.
func (s *Store) PutPush(ctx context.Context, handle string, sub storage.PushSubscription, limit int) error {
	_, err := s.changePush(ctx, handle, func(list []storage.PushSubscription) ([]storage.PushSubscription, bool) {
		return storage.MergePush(list, sub, limit), true
	})
	return err
}

// DeletePush removes handle's subscription to endpoint.
func (s *Store) DeletePush(ctx context.Context, handle, endpoint string) (bool, error) {
	found := false
	_, err := s.changePush(ctx, handle, func(list []storage.PushSubscription) ([]storage.PushSubscription, bool) {
		list, found = storage.WithoutPush(list, endpoint)
		return list, found
	})
	return found, err
}

// PushSubscriptions returns handle's list.
func (s *Store) PushSubscriptions(ctx context.Context, handle string) ([]storage.PushSubscription, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if !validToken(handle) {
		return nil, nil
	}
	if list, ok := s.cachedPushList(handle); ok {
		return list, nil
	}
	readAt := time.Now()
	data, seq, err := s.getKeySeq(ctx, pushListKey(handle), false)
	if isNotFound(err) {
		// seq 0 passes the cache's guard only while no write is known here.
		s.cachePushList(handle, nil, 0, readAt)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var list []storage.PushSubscription
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, err
	}
	s.cachePushList(handle, list, seq, readAt)
	return list, nil
}

// changePush rewrites handle's list with change (which reports whether it
// changed anything) by compare-and-set, retrying when another change came
// first. A list written while the handle was being deleted is deleted
// again: the check after the write sees the deletion's marker, which is
// written before the deletion's purge.
func (s *Store) changePush(ctx context.Context, handle string, change func([]storage.PushSubscription) ([]storage.PushSubscription, bool)) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return false, err
	}
	if err := s.exists(ctx, handle); err != nil {
		return false, err
	}
	key := pushListKey(handle)
	for attempt := 0; ; attempt++ {
		cur, err := s.leaderKey(ctx, key)
		if err != nil {
			return false, err
		}
		var list []storage.PushSubscription
		if cur.live() {
			if err := json.Unmarshal(cur.data, &list); err != nil {
				return false, err
			}
		}
		next, changed := change(list)
		if !changed {
			return false, nil
		}
		msg := s.tombstone(key)
		if len(next) > 0 {
			data, err := json.Marshal(next)
			if err != nil {
				return false, err
			}
			msg = s.put(key, data, cur.seq)
		}
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(cur.seq, 10))
		ack, err := s.publish(ctx, msg)
		if err == nil {
			s.pushWritten(handle, ack.Seq)
		}
		if isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
			if err := sleep(ctx, backoff(attempt)); err != nil {
				return false, err
			}
			continue
		}
		if err != nil {
			return false, err
		}
		h, err := s.leaderKey(ctx, handleKey(handle))
		if err == nil && !h.live() {
			if ack, err := s.publish(ctx, s.tombstone(key)); err == nil { // else purged by the deletion's job
				s.pushWritten(handle, ack.Seq)
			}
			return false, storage.ErrNotFound
		}
		return true, err
	}
}
