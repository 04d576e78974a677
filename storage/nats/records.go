package nats

import (
	"context"
	"errors"
	"strconv"
	"time"

	natsio "github.com/nats-io/nats.go"

	"github.com/kezchat/kez/storage"
)

// Idempotency records, in the inbox stream beside the messages:
//
//	<prefix>.ids.<handle>.<key>.c  a claim: an Append is storing the message
//	<prefix>.ids.<handle>.<key>.d  done: the message is stored (Kez-Seq,
//	                               Kez-Received-At)
//
// Every write to a key's records expects a last sequence on
// <prefix>.ids.<handle>.<key>.*, so they never race. The stream's MaxAge
// and Expire remove them with retention; Ack leaves them.

func (s *Store) recordFilter(handle, key string) string { return s.idsSubj + handle + "." + key + ".*" }
func (s *Store) claimSubj(handle, key string) string    { return s.idsSubj + handle + "." + key + ".c" }
func (s *Store) doneSubj(handle, key string) string     { return s.idsSubj + handle + "." + key + ".d" }

// idRecord is the latest record of a key.
type idRecord struct {
	seq     uint64 // of the record itself
	done    bool
	msgSeq  uint64 // done: the message's seq
	at      int64  // done: the message's received_at; a claim: when it was made
	attempt string
}

// findRecord reads the latest record of key from the leader; nil if none.
func (s *Store) findRecord(ctx context.Context, handle, key string) (*idRecord, error) {
	sm, err := s.leaderGet(ctx, s.inboxName, map[string]any{"last_by_subj": s.recordFilter(handle, key)})
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r := rawFromStored(sm)
	rec := &idRecord{seq: r.seq, done: sm.Subject == s.doneSubj(handle, key), attempt: r.hdr.Get(hdrAttempt), at: receivedAt(r.hdr, r.time)}
	if rec.done {
		rec.msgSeq, _ = strconv.ParseUint(r.hdr.Get(hdrSeq), 10, 64)
	}
	return rec, nil
}

// claimStale: a claim older than this outlived the Append that made it.
func (s *Store) claimStale() time.Duration { return s.timeout + 5*time.Second }

// resolve returns the latest record of op's key once no other Append is
// storing it: it waits for another call's claim to be done or released,
// and takes over one that outlived its call. nil: no record (left).
func (op *appendOp) resolve(ctx context.Context) (*idRecord, error) {
	if op.key == "" {
		return nil, nil
	}
	s := op.s
	s.waitRecords(ctx, s.doneSubj(op.d.To, op.key))
	for round := 0; ; round++ {
		rec, err := s.findRecord(ctx, op.d.To, op.key)
		if err != nil || rec == nil || rec.done || rec.attempt == op.attempt {
			return rec, err
		}
		if time.Since(time.UnixMilli(rec.at)) > s.claimStale() {
			if _, err := s.purge(ctx, s.recordFilter(op.d.To, op.key), rec.seq+1); err != nil {
				return nil, err
			}
			continue
		}
		if err := sleep(ctx, backoff(round)); err != nil {
			return nil, err
		}
	}
}

// claim makes a pending record of op's key, only if it has none. It
// returns the claim's seq, or the record of a copy already stored.
func (op *appendOp) claim(ctx context.Context) (uint64, *idRecord, error) {
	s := op.s
	for round := 0; ; round++ {
		msg := natsio.NewMsg(s.claimSubj(op.d.To, op.key))
		expect(msg, s.recordFilter(op.d.To, op.key), 0)
		msg.Header.Set(hdrAttempt, op.attempt)
		msg.Header.Set(hdrReceivedAt, strconv.FormatInt(time.Now().UnixMilli(), 10))
		ack, err := s.publish(ctx, msg)
		if err == nil {
			return ack.Seq, nil, nil
		}
		if !conflict(err) {
			return 0, nil, err
		}
		rec, err := op.resolve(ctx)
		switch {
		case err != nil:
			return 0, nil, err
		case rec == nil: // released, or taken over: claim again
		case rec.done:
			return 0, rec, nil
		default: // ours: a retry of a claim that was stored
			return rec.seq, nil, nil
		}
		if err := sleep(ctx, backoff(round)); err != nil {
			return 0, nil, err
		}
	}
}

// writeRecord writes the done record of a message stored at seq, after
// the record at `after` (the claim; 0: none).
func (s *Store) writeRecord(ctx context.Context, handle, key string, after, seq uint64, at int64, attempt string) error {
	msg := natsio.NewMsg(s.doneSubj(handle, key))
	expect(msg, s.recordFilter(handle, key), after)
	msg.Header.Set(hdrSeq, strconv.FormatUint(seq, 10))
	msg.Header.Set(hdrReceivedAt, strconv.FormatInt(at, 10))
	if attempt != "" {
		msg.Header.Set(hdrAttempt, attempt)
	}
	_, err := s.publish(ctx, msg)
	if isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
		// Written already (a retry, or a copy's Append), or a claim came
		// first, whose Append finds this message by its id.
		return nil
	}
	return err
}

// writeRecordAsync writes a done record without making Append wait for
// it. Expire and Close wait for those under way, and so does an Append of
// the same key on this server.
func (s *Store) writeRecordAsync(handle, key string, seq uint64, at int64, attempt string) {
	if key == "" {
		return
	}
	subj := s.doneSubj(handle, key)
	done := make(chan struct{})
	s.recMu.Lock()
	s.records[subj] = done
	s.recMu.Unlock()
	go func() {
		defer func() {
			s.recMu.Lock()
			if s.records[subj] == done {
				delete(s.records, subj)
			}
			s.recMu.Unlock()
			close(done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		if err := s.writeRecord(ctx, handle, key, 0, seq, at, attempt); err != nil {
			s.log.Warn("could not write an idempotency record: a copy of this message sent after the dedupe window would be stored again",
				"handle", handle, "seq", seq, "error", err)
		}
	}()
}

// waitRecords waits for the record of subj ("": all) being written here.
func (s *Store) waitRecords(ctx context.Context, subj string) {
	s.recMu.Lock()
	var wait []chan struct{}
	if subj == "" {
		for _, ch := range s.records {
			wait = append(wait, ch)
		}
	} else if ch := s.records[subj]; ch != nil {
		wait = append(wait, ch)
	}
	s.recMu.Unlock()
	for _, ch := range wait {
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}
