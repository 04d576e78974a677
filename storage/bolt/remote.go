package bolt

import (
	"context"
	"encoding/json"

	"go.etcd.io/bbolt"

	"github.com/kezchat/kez/storage"
)

// bucketRemoteLogs holds, per other server's name, what this server keeps
// about that server's binding log (storage.RemoteLog as JSON). It is made
// on the first write, so databases made before federation need nothing.
var bucketRemoteLogs = []byte("remote_logs")

// RemoteLog returns what is kept about server's log, or storage.ErrNotFound.
func (s *Store) RemoteLog(_ context.Context, server string) (storage.RemoteLog, error) {
	if err := s.checkOpen(); err != nil {
		return storage.RemoteLog{}, err
	}
	var rl storage.RemoteLog
	found := false
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		rl, found, err = getRemoteLog(tx, server)
		return err
	})
	if err != nil {
		return storage.RemoteLog{}, mapErr(err)
	}
	if !found {
		return storage.RemoteLog{}, storage.ErrNotFound
	}
	return rl, nil
}

// UpdateRemoteLog changes what is kept about server's log in one transaction.
func (s *Store) UpdateRemoteLog(_ context.Context, server string, fn func(storage.RemoteLog, bool) (storage.RemoteLog, error)) (storage.RemoteLog, error) {
	if err := s.checkOpen(); err != nil {
		return storage.RemoteLog{}, err
	}
	var out storage.RemoteLog
	err := s.db.Update(func(tx *bbolt.Tx) error {
		cur, found, err := getRemoteLog(tx, server)
		if err != nil {
			return err
		}
		if out, err = fn(cur, found); err != nil {
			return err
		}
		out.Server = server
		data, err := json.Marshal(out)
		if err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(bucketRemoteLogs)
		if err != nil {
			return err
		}
		return b.Put([]byte(server), data)
	})
	if err != nil {
		return storage.RemoteLog{}, mapErr(err)
	}
	return out, nil
}

// ForgetRemoteLog removes what is kept about server's log.
func (s *Store) ForgetRemoteLog(_ context.Context, server string) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	return mapErr(s.db.Update(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketRemoteLogs); b != nil {
			return b.Delete([]byte(server))
		}
		return nil
	}))
}

func getRemoteLog(tx *bbolt.Tx, server string) (storage.RemoteLog, bool, error) {
	b := tx.Bucket(bucketRemoteLogs)
	if b == nil {
		return storage.RemoteLog{}, false, nil
	}
	data := b.Get([]byte(server))
	if data == nil {
		return storage.RemoteLog{}, false, nil
	}
	var rl storage.RemoteLog
	if err := json.Unmarshal(data, &rl); err != nil {
		return storage.RemoteLog{}, false, err
	}
	return rl, true, nil
}
