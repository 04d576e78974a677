package bolt

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/gowebpki/jcs"
	"go.etcd.io/bbolt"

	"github.com/kezchat/kez/storage"
)

// schemaVersion is the layout this package writes (see the package doc).
// Version 1 (no meta bucket) stored received_at + envelope per message and
// nothing else per inbox; version 2 had no binding log, no listers index
// and no cooldown records; version 3 kept the idempotency keys a second
// time, by hash (idem).
const schemaVersion = 4

var metaSchema = []byte("schema")

// migrateChunk and migrateBytes bound one migration transaction.
const (
	migrateChunk = 1000
	migrateBytes = 16 << 20
)

// migrate brings a database to schemaVersion, once: first v1 to v2
// (migrateV1), then v2 to v3 (migrateV2), then v3 to v4 (migrateV3).
// index is the key index loaded from the file as it is; the migrations
// keep it in step.
func migrate(db *bbolt.DB, index *idemIndex) error {
	var schema uint64
	err := db.View(func(tx *bbolt.Tx) error {
		schema = u64(tx.Bucket(bucketMeta).Get(metaSchema))
		return nil
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
	if schema < 2 {
		if err := migrateV1(db, index); err != nil {
			return err
		}
	}
	if schema < 3 {
		if err := migrateV2(db, index); err != nil {
			return err
		}
	}
	if err := migrateV3(db, index); err != nil {
		return err
	}
	return db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaSchema, seqKey(schemaVersion))
	})
}

// migrateV1 brings a v1 database to schema 2, once: v1 messages are
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
func migrateV1(db *bbolt.DB, index *idemIndex) error {
	var handles []string
	err := db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketInboxes).ForEachBucket(func(name []byte) error {
			handles = append(handles, string(name))
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, handle := range handles {
		if err := migrateInbox(db, index, handle); err != nil {
			return fmt.Errorf("migrate inbox %q: %w", handle, err)
		}
	}
	return db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaSchema, seqKey(2))
	})
}

// migrateV2 brings a schema 2 database to schema 3:
//   - the listers index is built from every inbox's accepted and blocked
//     lists (puts of what is there: running it again changes nothing);
//   - every binding gets its log leaf, as v2 had no log: the registrations
//     are appended in the order of (registered_at, handle), each record
//     getting its LogIndex, its Registration in JCS form (it already is,
//     as v2 stored it; the leaf and the record must be the same bytes).
//
// A record counts as logged when the leaf at its LogIndex is its
// registration, so a migration cut short appends only what is missing, in
// the same order: the leaves are the same whenever it finishes. Both parts
// work in transactions of at most migrateChunk records or inboxes.
func migrateV2(db *bbolt.DB, index *idemIndex) error {
	var inboxes [][]byte
	err := db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketState).ForEachBucket(func(name []byte) error {
			inboxes = append(inboxes, bytes.Clone(name))
			return nil
		})
	})
	if err != nil {
		return err
	}
	for chunk := range slices.Chunk(inboxes, migrateChunk) {
		err := db.Update(func(tx *bbolt.Tx) error {
			listers := tx.Bucket(bucketListers)
			for _, name := range chunk {
				st := tx.Bucket(bucketState).Bucket(name)
				for _, list := range [][]byte{stAccepted, stBlocked} {
					b := st.Bucket(list)
					if b == nil {
						continue
					}
					if err := b.ForEach(func(k, _ []byte) error { return listers.Put(cat(k, name), present) }); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("index contact lists: %w", err)
		}
	}

	type binding struct {
		at     int64
		handle string
	}
	var todo []binding
	err = db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketHandles).ForEach(func(k, v []byte) error {
			var rec storage.Record
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode record %q: %w", k, err)
			}
			if !logged(tx, rec) {
				todo = append(todo, binding{rec.RegisteredAt, string(k)})
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	slices.SortFunc(todo, func(a, b binding) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.handle, b.handle))
	})
	for chunk := range slices.Chunk(todo, migrateChunk) {
		_, err := writeIn(db, index, func(w *writeTx) error {
			tx := w.tx
			handles := tx.Bucket(bucketHandles)
			for _, b := range chunk {
				rec, ok, err := getRecord(handles, b.handle)
				if err != nil {
					return err
				}
				if !ok || logged(tx, rec) {
					continue
				}
				if canonical, err := jcs.Transform(rec.Registration); err == nil {
					rec.Registration = canonical
				}
				if rec.LogIndex, err = w.logAppend(rec.Registration); err != nil {
					return err
				}
				raw, err := marshalRecord(rec)
				if err != nil {
					return err
				}
				if err := handles.Put([]byte(b.handle), raw); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("log the existing bindings: %w", err)
		}
	}
	return nil
}

// logged reports whether rec's leaf is in the log: the leaf at its
// LogIndex is the object that made its binding.
func logged(tx *bbolt.Tx, rec storage.Record) bool {
	made := rec.Registration
	if rec.Rotation != nil {
		made = rec.Rotation
	}
	leaf := tx.Bucket(bucketLogData).Get(seqKey(uint64(rec.LogIndex)))
	return leaf != nil && rec.LogIndex >= 0 && bytes.Equal(leaf, made)
}

func migrateInbox(db *bbolt.DB, index *idemIndex, handle string) error {
	next := uint64(0)
	stored := uint64(0) // messages seen, all ordinary: nothing is appended before the schema is written
	for done := false; !done; {
		_, err := writeIn(db, index, func(w *writeTx) error {
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
	if _, _, ok := w.keyAt(idem); ok {
		return nil // this message's own key (a migration resumed) or an earlier copy's
	}
	return w.remember(idem, sk, int64(u64(at)))
}

// migrateV3 brings a schema 3 database to schema 4: each entry of
// idem_times (received_at + idem → 1) gets the seq its idem entry held
// (idem → seq + received_at), and idem is deleted. A time entry whose idem
// entry is missing or holds another time is stale and deleted. An entry
// with an 8-byte value is done, so a migration cut short goes on where it
// was; idem goes last.
func migrateV3(db *bbolt.DB, index *idemIndex) error {
	var next []byte // where the last chunk stopped
	for done := false; !done; {
		_, err := writeIn(db, index, func(w *writeTx) error {
			old := w.tx.Bucket(bucketIdem)
			if old == nil {
				done = true
				return nil
			}
			type entry struct{ k, seq []byte }
			var todo []entry
			c := w.idemTimes.Cursor()
			k, v := c.First()
			if next != nil {
				k, v = c.Seek(next)
			}
			for ; k != nil && len(todo) < migrateChunk; k, v = c.Next() {
				next = append(bytes.Clone(k), 0)
				if len(v) == 8 {
					continue
				}
				var seq []byte
				if len(k) == 8+sha256.Size {
					if hv := old.Get(k[8:]); len(hv) == 16 && bytes.Equal(hv[8:], k[:8]) {
						seq = bytes.Clone(hv[:8])
					}
				}
				todo = append(todo, entry{bytes.Clone(k), seq})
			}
			for _, e := range todo {
				var err error
				switch {
				case e.seq != nil:
					err = w.idemTimes.Put(e.k, e.seq)
				case len(e.k) == 8+sha256.Size:
					err = w.forget(int64(u64(e.k[:8])), [sha256.Size]byte(e.k[8:]))
				default:
					err = w.idemTimes.Delete(e.k)
				}
				if err != nil {
					return err
				}
			}
			if len(todo) < migrateChunk {
				done = true
				return w.tx.DeleteBucket(bucketIdem)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("migrate the idempotency keys: %w", err)
		}
	}
	return nil
}
