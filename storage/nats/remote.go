package nats

import (
	"context"
	"encoding/json"

	"github.com/kezchat/kez/storage"
)

// What this server keeps about other servers' binding logs (SPEC §8) is in
// the registry bucket under remote.<server name>, one storage.RemoteLog as
// JSON, changed with optimistic concurrency like the contact lists, so
// every server on the cluster pins the same key and checkpoint.

const remotePrefix = "remote."

// RemoteLog returns what is kept about server's log, or storage.ErrNotFound.
func (s *Store) RemoteLog(ctx context.Context, server string) (storage.RemoteLog, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return storage.RemoteLog{}, err
	}
	data, err := s.getKey(ctx, remotePrefix+server, true)
	if err != nil {
		return storage.RemoteLog{}, err
	}
	var rl storage.RemoteLog
	err = json.Unmarshal(data, &rl)
	return rl, err
}

// UpdateRemoteLog changes what is kept about server's log: read at the
// leader, written only if nobody wrote it since, else read again.
func (s *Store) UpdateRemoteLog(ctx context.Context, server string, fn func(storage.RemoteLog, bool) (storage.RemoteLog, error)) (storage.RemoteLog, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return storage.RemoteLog{}, err
	}
	key := remotePrefix + server
	for attempt := 0; ; attempt++ {
		k, err := s.leaderKey(ctx, key)
		if err != nil {
			return storage.RemoteLog{}, err
		}
		var cur storage.RemoteLog
		if k.live() {
			if err := json.Unmarshal(k.data, &cur); err != nil {
				return storage.RemoteLog{}, err
			}
		}
		next, err := fn(cur, k.live())
		if err != nil {
			return storage.RemoteLog{}, err
		}
		next.Server = server
		data, err := json.Marshal(next)
		if err != nil {
			return storage.RemoteLog{}, err
		}
		_, err = s.publish(ctx, s.put(key, data, k.seq))
		if isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
			if err := sleep(ctx, backoff(attempt)); err != nil {
				return storage.RemoteLog{}, err
			}
			continue
		}
		if err != nil {
			return storage.RemoteLog{}, err
		}
		return next, nil
	}
}

// ForgetRemoteLog removes what is kept about server's log.
func (s *Store) ForgetRemoteLog(ctx context.Context, server string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return err
	}
	k, err := s.leaderKey(ctx, remotePrefix+server)
	if err != nil || !k.live() {
		return err
	}
	_, err = s.publish(ctx, s.tombstone(remotePrefix+server))
	return err
}
