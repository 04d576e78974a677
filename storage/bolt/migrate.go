package bolt

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// schemaVersion is the layout this package writes (see the package doc).
// Version 1 (no meta bucket) stored received_at + envelope per message and
// nothing else per inbox.
const schemaVersion = 2

var metaSchema = []byte("schema")

// migrateChunk and migrateBytes bound one migration transaction.
const (
	migrateChunk = 1000
	migrateBytes = 16 << 20
)

// migrate brings a database to schemaVersion, once: v1 messages are
// rewritten in the v2 layout with
//   - from: the envelope's "from" member as stored (it was validated on the
//     way in); if it cannot be read, the message is kept with no From,
//   - request: false (v1 had no requests; they stay counted as messages),
//   - from_addr: "" (the store does not know its server's name, and the
//     handle bound to the key now need not be the one that sent it, so it
//     would claim a verification that never happened),
//
// and each gets its idempotency key (from, envelope's "sig"), kept for
// retention like any other, so a resend across the upgrade is not stored
// twice. Every inbox gets its (empty) contact lists, and its count of
// messages is set from what it holds.
//
// It works in small transactions; each message value says which layout it
// has, so a migration cut short by a crash resumes where it was. The schema
// is written last.
func migrate(db *bolt.DB) error {
	var schema uint64
	var handles []string
	err := db.View(func(tx *bolt.Tx) error {
		schema = u64(tx.Bucket(bucketMeta).Get(metaSchema))
		if schema >= schemaVersion {
			return nil
		}
		return tx.Bucket(bucketInboxes).ForEachBucket(func(name []byte) error {
			handles = append(handles, string(name))
			return nil
		})
	})
	if err != nil {
		return err
	}
	switch {
	case schema == schemaVersion:
		return nil
	case schema > schemaVersion:
		return fmt.Errorf("database schema %d is newer than this version (%d)", schema, schemaVersion)
	}
	for _, handle := range handles {
		if err := migrateInbox(db, handle); err != nil {
			return fmt.Errorf("migrate inbox %q: %w", handle, err)
		}
	}
	return db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaSchema, seqKey(schemaVersion))
	})
}

func migrateInbox(db *bolt.DB, handle string) error {
	next := uint64(0)
	stored := uint64(0) // messages seen, all ordinary: nothing is appended before the schema is written
	for done := false; !done; {
		err := db.Update(func(tx *bolt.Tx) error {
			w := newWriteTx(tx)
			ix, err := w.inbox(handle)
			if err != nil || ix == nil {
				done = true
				return err
			}
			type old struct {
				key       []byte
				val       []byte
				outOfLine bool
			}
			var todo []old
			scanned, size := 0, 0
			c := ix.msgs.Cursor()
			k, v := c.Seek(seqKey(next))
			for ; k != nil && scanned < migrateChunk && size < migrateBytes; k, v = c.Next() {
				scanned++
				next = u64(k) + 1
				val := messageValue(ix.msgs, k, v)
				if len(k) == 8 && len(val) >= 9 {
					stored++
				}
				if len(k) != 8 || len(val) < 9 || val[8]&flagV2 != 0 {
					continue // migrated already (or not a message)
				}
				todo = append(todo, old{append([]byte(nil), k...), append([]byte(nil), val...), v == nil})
				size += len(val)
			}
			done = k == nil
			for _, m := range todo {
				if err := w.migrateMessage(ix, m.key, m.val, m.outOfLine); err != nil {
					return err
				}
			}
			if done { // the count, from what is stored
				return w.counts.Put(ix.name, seqKey(stored))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// migrateMessage rewrites one v1 value (received_at + envelope) stored
// under seq key sk.
func (w *writeTx) migrateMessage(ix *inbox, sk, v1 []byte, outOfLine bool) error {
	at, envelope := v1[:8], v1[8:]
	var env struct {
		From string `json:"from"`
		Sig  string `json:"sig"`
	}
	_ = json.Unmarshal(envelope, &env) // validated when it was stored; a failure leaves them empty
	from, err := packPrimary(env.From)
	var flags byte
	if err != nil {
		flags = flagNoFrom
	}
	val := encodeMessage(int64(u64(at)), flags, from[:], "", envelope)
	if outOfLine {
		if err := ix.msgs.Bucket(sk).Put(msgKey, val); err != nil {
			return err
		}
	} else if err := ix.msgs.Put(sk, val); err != nil {
		return err
	}
	if flags&flagNoFrom != 0 || env.Sig == "" {
		return nil
	}
	// v1 stored resends again: the first one keeps the key.
	idem := idemKey(string(ix.name), from, env.Sig)
	if v := w.idem.Get(idem[:]); len(v) == 16 && u64(v[:8]) != u64(sk) {
		return nil
	}
	return w.remember(idem[:], sk, at)
}
