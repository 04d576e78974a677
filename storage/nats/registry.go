package nats

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/kezchat/kez/storage"
)

// Headers of the atomic batch publish protocol (nats-server 2.12, ADR-50).
// nats.go 1.55 has no client for it and the orbit.go extension module
// available to us (natsext v0.1.3) has none either, so the three headers are
// set here: every message carries the batch id and its 1-based position,
// the last one also the commit marker and is the only one sent as a
// request; the server stores all of them or none and answers the commit
// with one PubAck (or the error of the first message that failed a check).
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
)

// JetStream error codes this package tells apart.
const (
	errCodeWrongLastSeq      = 10071 // expected last (subject) sequence differs
	errCodeWrongLastSeqConst = 10164 // the same, for replicated streams
	errCodeNoMessage         = 10037
	errCodeStoreFailed       = 10077 // carries "maximum messages per subject exceeded"
)

// validToken reports whether s can be one subject token of a handle:
// what kez.ValidHandle allows ([a-z0-9_-]) plus upper case.
func validToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func handleKey(handle string) string { return "h." + handle }

// primaryKey maps ed25519:<hex> to p.ed25519.<hex> (readable in `nats kv
// ls`); anything else a future suite may bring is base64url-encoded after
// "p._." so that it always fits the key charset.
func primaryKey(primary string) string {
	for i := 0; i < len(primary); i++ {
		if primary[i] == ':' {
			alg, rest := primary[:i], primary[i+1:]
			if validToken(alg) && alg != "_" && validToken(rest) {
				return "p." + alg + "." + rest
			}
			break
		}
	}
	return "p._." + base64.RawURLEncoding.EncodeToString([]byte(primary))
}

// inviteKey encodes an opaque invite so any bytes fit the key charset.
func inviteKey(invite string) string {
	return "i." + base64.RawURLEncoding.EncodeToString([]byte(invite))
}

// pubAck is the server's answer to a publish or a batch commit.
type pubAck struct {
	apiResponse
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate,omitempty"`
	BatchID   string `json:"batch,omitempty"`
	BatchSize int    `json:"count,omitempty"`
}

func decodeAck(m *natsio.Msg) (*pubAck, error) {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return nil, natsio.ErrNoResponders
	}
	var ack pubAck
	if err := json.Unmarshal(m.Data, &ack); err != nil {
		return nil, fmt.Errorf("nats: undecodable publish acknowledgement: %w", err)
	}
	if ack.Error != nil {
		return nil, ack.Error
	}
	return &ack, nil
}

// publishBatch stores msgs atomically: all of them or none.
func (s *Store) publishBatch(ctx context.Context, msgs []*natsio.Msg) (*pubAck, error) {
	id := nuid.Next()
	for i, m := range msgs {
		m.Header.Set(hdrBatchID, id)
		m.Header.Set(hdrBatchSeq, strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := s.nc.PublishMsg(m); err != nil {
				return nil, netErr(err)
			}
			continue
		}
		m.Header.Set(hdrBatchCommit, "1")
		reply, err := s.nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			return nil, netErr(err)
		}
		ack, err := decodeAck(reply)
		if s.batchFault != nil {
			return s.batchFault(ack, err)
		}
		return ack, err
	}
	return nil, errors.New("nats: empty batch")
}

func isCode(err error, codes ...jetstream.ErrorCode) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	for _, c := range codes {
		if apiErr.ErrorCode == c {
			return true
		}
	}
	return false
}

// Register appends rec.Registration to the binding log in one atomic
// batch with the handle key, the primary key and the invite key (see
// appendLog), each claimed only if it was never written, or (handle and
// primary) at the revision of the delete marker a deletion or rotation
// left. When the batch fails a claim, leader reads tell which.
func (s *Store) Register(ctx context.Context, rec storage.Record, invite string) (storage.Record, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkLog(ctx); err != nil {
		return storage.Record{}, false, err
	}
	if !validToken(rec.Handle) {
		return storage.Record{}, false, fmt.Errorf("nats: handle %q cannot be a subject token", rec.Handle)
	}
	attempt := nuid.Next()
	// The revisions the two keys are claimed at: 0 (never written), or
	// their delete marker's.
	var hRev, pRev, floor uint64
	purged := false
	for round := 0; ; round++ {
		var stored storage.Record
		_, _, err := s.appendLog(ctx, rec.Registration, func(n int64) ([]*natsio.Msg, error) {
			stored = rec
			stored.LogIndex = n
			raw, err := encodeRecord(stored, floor)
			if err != nil {
				return nil, err
			}
			h := s.put(handleKey(rec.Handle), raw, hRev)
			h.Header.Set(hdrBindingOp, "register")
			h.Header.Set(hdrAttempt, attempt)
			msgs := []*natsio.Msg{h, s.put(primaryKey(rec.Primary), []byte(rec.Handle), pRev)}
			if invite != "" {
				msgs = append(msgs, s.claim(inviteKey(invite), []byte(rec.Handle)))
			}
			return msgs, nil
		})
		if err == nil {
			s.known(rec.Handle)
			return stored, true, nil
		}
		if !errors.Is(err, errBinding) {
			return storage.Record{}, false, err
		}
		// A claim failed: find out which, from the leader.
		before := [2]uint64{hRev, pRev}
		h, err := s.leaderKey(ctx, handleKey(rec.Handle))
		if err != nil {
			return storage.Record{}, false, err
		}
		switch {
		case h.live():
			cur, _, err := decodeRecord(h.data)
			if err != nil {
				return storage.Record{}, false, err
			}
			s.known(rec.Handle)
			if cur.Primary == rec.Primary {
				// An idempotent retry, or this call's batch whose
				// answer was lost.
				return cur, h.hdr.Get(hdrAttempt) == attempt, nil
			}
			return storage.Record{}, false, storage.ErrHandleTaken
		case h.deleted:
			// Cooling down while the cooldown ends after RegisteredAt:
			// the time the server accepted the registration.
			if until, _ := strconv.ParseInt(h.hdr.Get(hdrCooldown), 10, 64); until > rec.RegisteredAt*1000 {
				return storage.Record{}, false, storage.ErrCoolingDown
			}
			if !purged {
				// Whatever a server that had not yet learnt of the
				// deletion stored after its purge goes now.
				if err := s.purgeInbox(ctx, rec.Handle); err != nil {
					return storage.Record{}, false, err
				}
				var info struct {
					apiResponse
					State jetstream.StreamState `json:"state"`
				}
				if err := s.api(ctx, "STREAM.INFO."+s.inboxName, nil, &info); err != nil {
					return storage.Record{}, false, err
				}
				floor, purged = info.State.LastSeq, true
			}
			hRev = h.seq
		default:
			hRev = 0
		}
		p, err := s.leaderKey(ctx, primaryKey(rec.Primary))
		if err != nil {
			return storage.Record{}, false, err
		}
		switch {
		case p.live():
			return storage.Record{}, false, storage.ErrPrimaryTaken
		case p.deleted:
			pRev = p.seq
		default:
			pRev = 0
		}
		if invite != "" {
			i, err := s.leaderKey(ctx, inviteKey(invite))
			if err != nil {
				return storage.Record{}, false, err
			}
			if i.seq > 0 {
				return storage.Record{}, false, storage.ErrInviteUsed
			}
		}
		if before == [2]uint64{hRev, pRev} {
			// The winner of a race is not applied yet: look again.
			if err := sleep(ctx, backoff(round)); err != nil {
				return storage.Record{}, false, err
			}
		}
	}
}

// Rotate moves handle from old to new in one atomic batch with the log
// append of rotation: the record rewritten at the revision it was read at
// (Primary new, Rotation, LogIndex), old's primary key deleted, new's
// claimed (never written, or at its delete marker), and the job that then
// moves every acceptance and block of old to new (see jobs.go), which
// runs before Rotate returns; if it fails, it is left to the background.
func (s *Store) Rotate(ctx context.Context, handle, old, new string, rotation []byte) (storage.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkLog(ctx); err != nil {
		return storage.Record{}, err
	}
	if !validToken(handle) {
		return storage.Record{}, storage.ErrNotFound
	}
	attempt := nuid.Next()
	job := jobDoc{Op: "rotate", Handle: handle, Old: old, New: new}
	for round := 0; ; round++ {
		h, err := s.leaderKey(ctx, handleKey(handle))
		if err != nil {
			return storage.Record{}, err
		}
		if !h.live() {
			return storage.Record{}, storage.ErrNotFound
		}
		rec, _, err := decodeRecord(h.data)
		if err != nil {
			return storage.Record{}, err
		}
		if rec.Primary != old {
			if rec.Primary == new && h.hdr.Get(hdrAttempt) == attempt {
				// This call's batch, whose answer was lost.
				s.noteChanged(handle, h.seq)
				if err := s.runJob(ctx, rec.LogIndex, job); err != nil {
					s.log.Warn("rotation: moving acceptances and blocks to the new key failed; retried in the background", "handle", handle, "index", rec.LogIndex, "error", err)
				}
				return rec, nil
			}
			return storage.Record{}, storage.ErrNotFound
		}
		if new == old {
			return storage.Record{}, storage.ErrPrimaryTaken
		}
		p, err := s.leaderKey(ctx, primaryKey(new))
		if err != nil {
			return storage.Record{}, err
		}
		if p.live() {
			return storage.Record{}, storage.ErrPrimaryTaken
		}
		var out storage.Record
		n, first, err := s.appendLog(ctx, rotation, func(n int64) ([]*natsio.Msg, error) {
			out = rec
			out.Primary, out.Rotation, out.LogIndex = new, rotation, n
			raw, err := encodeRecord(out, recordFloor(h.data))
			if err != nil {
				return nil, err
			}
			hm := s.put(handleKey(handle), raw, h.seq)
			hm.Header.Set(hdrBindingOp, "rotate")
			hm.Header.Set(hdrAttempt, attempt)
			jm, err := s.jobMsg(n, job)
			if err != nil {
				return nil, err
			}
			// old's key needs no check of its own: it changes only with
			// the handle's record, which is checked.
			return []*natsio.Msg{hm, s.tombstone(primaryKey(old)), s.put(primaryKey(new), []byte(handle), p.seq), jm}, nil
		})
		if errors.Is(err, errBinding) {
			if err := sleep(ctx, backoff(round)); err != nil {
				return storage.Record{}, err
			}
			continue
		}
		if err != nil {
			return storage.Record{}, err
		}
		s.noteChanged(handle, first)
		if err := s.runJob(ctx, n, job); err != nil {
			s.log.Warn("rotation: moving acceptances and blocks to the new key failed; retried in the background", "handle", handle, "index", n, "error", err)
		}
		return out, nil
	}
}

// Delete ends handle's binding in one atomic batch with the log append of
// deletion: the record replaced by a delete marker (at the revision it
// was read at) that holds the cooldown's end and the deletion's index,
// the primary key deleted, and the job that then purges the inbox and
// the contact list (see jobs.go), run before Delete returns.
func (s *Store) Delete(ctx context.Context, handle, primary string, deletion []byte, cooldownUntil time.Time) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkLog(ctx); err != nil {
		return 0, err
	}
	if !validToken(handle) {
		return 0, storage.ErrNotFound
	}
	attempt := nuid.Next()
	job := jobDoc{Op: "delete", Handle: handle}
	for round := 0; ; round++ {
		h, err := s.leaderKey(ctx, handleKey(handle))
		if err != nil {
			return 0, err
		}
		if h.deleted && h.hdr.Get(hdrAttempt) == attempt {
			// This call's batch, whose answer was lost.
			n, err := strconv.ParseInt(h.hdr.Get(hdrLogIndex), 10, 64)
			if err != nil {
				return 0, err
			}
			s.noteChanged(handle, h.seq)
			s.forgetInbox(handle)
			if err := s.runJob(ctx, n, job); err != nil {
				s.log.Warn("deletion: purging the inbox failed; retried in the background", "handle", handle, "index", n, "error", err)
			}
			return n, nil
		}
		if !h.live() {
			return 0, storage.ErrNotFound
		}
		rec, _, err := decodeRecord(h.data)
		if err != nil {
			return 0, err
		}
		if rec.Primary != primary {
			return 0, storage.ErrNotFound
		}
		n, first, err := s.appendLog(ctx, deletion, func(n int64) ([]*natsio.Msg, error) {
			hm := s.tombstone(handleKey(handle))
			hm.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(h.seq, 10))
			hm.Header.Set(hdrBindingOp, "delete")
			hm.Header.Set(hdrAttempt, attempt)
			hm.Header.Set(hdrLogIndex, strconv.FormatInt(n, 10))
			hm.Header.Set(hdrCooldown, strconv.FormatInt(cooldownUntil.UnixMilli(), 10))
			jm, err := s.jobMsg(n, job)
			if err != nil {
				return nil, err
			}
			return []*natsio.Msg{hm, s.tombstone(primaryKey(primary)), jm}, nil
		})
		if errors.Is(err, errBinding) {
			if err := sleep(ctx, backoff(round)); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		s.noteChanged(handle, first)
		s.forgetInbox(handle)
		if err := s.runJob(ctx, n, job); err != nil {
			s.log.Warn("deletion: purging the inbox failed; retried in the background", "handle", handle, "index", n, "error", err)
		}
		return n, nil
	}
}

// put is a KV put at revision rev (0: only if the key was never written).
func (s *Store) put(key string, value []byte, rev uint64) *natsio.Msg {
	m := natsio.NewMsg(s.regSubj + key)
	m.Data = value
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	return m
}

// claim is a KV put that only succeeds if the key was never written.
func (s *Store) claim(key string, value []byte) *natsio.Msg { return s.put(key, value, 0) }

// tombstone is a KV delete marker.
func (s *Store) tombstone(key string) *natsio.Msg {
	m := natsio.NewMsg(s.regSubj + key)
	m.Header.Set(hdrKVOp, "DEL")
	return m
}

// storedRecord is a record as the registry holds it. InboxFloor, set when
// a handle is registered again after a deletion, is the inbox stream's
// last sequence once the old inbox was purged: a copy of an envelope the
// old inbox held (seq at most the floor, still known to the stream's
// dedupe window) is a new message for the new one.
type storedRecord struct {
	storage.Record
	InboxFloor uint64 `json:"inbox_floor,omitempty"`
}

// recordFloor reads a stored record's InboxFloor.
func recordFloor(data []byte) uint64 {
	var r struct {
		InboxFloor uint64 `json:"inbox_floor"`
	}
	_ = json.Unmarshal(data, &r)
	return r.InboxFloor
}

// encodeRecord is a record's JSON with its signed objects as they are
// (no HTML escaping).
func encodeRecord(r storage.Record, floor uint64) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(storedRecord{r, floor}); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// storedMsg is a message as the non-direct (leader) get API returns it.
type storedMsg struct {
	Subject string    `json:"subject"`
	Seq     uint64    `json:"seq"`
	Header  []byte    `json:"hdrs,omitempty"`
	Data    []byte    `json:"data,omitempty"`
	Time    time.Time `json:"time"`
}

// leaderGet asks the stream leader for one message: consistent with every
// acknowledged write, unlike a direct get a lagging follower may answer.
func (s *Store) leaderGet(ctx context.Context, stream string, req map[string]any) (*storedMsg, error) {
	var resp struct {
		apiResponse
		Message *storedMsg `json:"message"`
	}
	if err := s.api(ctx, "STREAM.MSG.GET."+stream, req, &resp); err != nil {
		if isCode(err, errCodeNoMessage) {
			return nil, storage.ErrNotFound
		}
		return nil, err
	}
	if resp.Message == nil {
		return nil, storage.ErrNotFound
	}
	return resp.Message, nil
}

// getKey reads a registry key: by direct get (any replica answers), and on
// a miss (or when leader is set) from the leader, so that a key written
// through another server a moment ago is never reported missing.
func (s *Store) getKey(ctx context.Context, key string, leader bool) ([]byte, error) {
	data, _, err := s.getKeySeq(ctx, key, leader)
	return data, err
}

// getKeySeq is getKey, with the sequence of the message read.
func (s *Store) getKeySeq(ctx context.Context, key string, leader bool) ([]byte, uint64, error) {
	subj := s.regSubj + key
	if !leader {
		m, err := retry(ctx, func(ctx context.Context) (*natsio.Msg, error) {
			m, err := s.nc.RequestWithContext(ctx, s.apiPrefix+"DIRECT.GET."+s.regName+"."+subj, nil)
			return m, netErr(err)
		})
		if err != nil {
			return nil, 0, err
		}
		switch status := m.Header.Get("Status"); {
		case status == "" && !kvDeleted(m.Header.Get(hdrKVOp)):
			seq, _ := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
			return m.Data, seq, nil
		case status != "" && status != "404":
			return nil, 0, fmt.Errorf("nats: direct get %s: %s %s", key, status, m.Header.Get("Description"))
		}
	}
	k, err := s.leaderKey(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	if !k.live() {
		return nil, 0, storage.ErrNotFound
	}
	return k.data, k.seq, nil
}

func kvDeleted(op string) bool { return op == "DEL" || op == "PURGE" }

func decodeHeaders(raw []byte) (natsio.Header, error) { return natsio.DecodeHeadersMsg(raw) }

// known remembers a registered handle, so that appends and reads to it
// skip the registry. A deletion, made here or seen by the bindings watch,
// forgets it (forgetInbox).
func (s *Store) known(handle string) {
	s.mu.Lock()
	s.handles[handle] = true
	s.mu.Unlock()
}

// exists returns nil for a registered handle, else ErrNotFound.
func (s *Store) exists(ctx context.Context, handle string) error {
	if !validToken(handle) {
		return storage.ErrNotFound
	}
	s.mu.Lock()
	ok := s.handles[handle]
	s.mu.Unlock()
	if ok {
		return nil
	}
	if _, err := s.getKey(ctx, handleKey(handle), false); err != nil {
		return err
	}
	s.known(handle)
	return nil
}

// noteChanged records that handle's record was rotated or deleted by the
// message at seq: a replica's answer older than that is stale, and
// lookups of handle ask the leader until replicas have it.
func (s *Store) noteChanged(handle string, seq uint64) {
	s.mu.Lock()
	if seq > s.changed[handle] {
		s.changed[handle] = seq
	}
	delete(s.recCache, handle)
	s.mu.Unlock()
}

func (s *Store) changedAt(handle string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed[handle]
}

// Lookup returns a handle's record.
func (s *Store) Lookup(ctx context.Context, handle string) (storage.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkLog(ctx); err != nil {
		return storage.Record{}, err
	}
	return s.lookup(ctx, handle, false)
}

// lookup reads a record by direct get, or from the leader when leader is
// set or the replica's answer predates a rotation or deletion known here.
func (s *Store) lookup(ctx context.Context, handle string, leader bool) (storage.Record, error) {
	if !validToken(handle) {
		return storage.Record{}, storage.ErrNotFound
	}
	if !leader {
		if rec, ok := s.cachedLookup(handle); ok {
			return rec, nil
		}
	}
	readAt := time.Now()
	data, seq, err := s.getKeySeq(ctx, handleKey(handle), leader)
	if err == nil && !leader && seq < s.changedAt(handle) {
		data, seq, err = s.getKeySeq(ctx, handleKey(handle), true)
	}
	if err != nil {
		return storage.Record{}, err
	}
	rec, _, err := decodeRecord(data)
	if err != nil {
		return storage.Record{}, fmt.Errorf("nats: record %q: %w", handle, err)
	}
	s.known(handle)
	s.cacheRecord(rec, seq, readAt)
	return rec, nil
}

// LookupPrimary returns the record bound to a primary. The primary key
// and the record are two reads: when they disagree (a replica behind a
// rotation), both are read again from the leader.
func (s *Store) LookupPrimary(ctx context.Context, primary string) (storage.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkLog(ctx); err != nil {
		return storage.Record{}, err
	}
	if handle, ok := s.cachedPrimary(primary); ok {
		if rec, err := s.lookup(ctx, handle, false); err == nil && rec.Primary == primary {
			return rec, nil
		}
	}
	for _, leader := range []bool{false, true} {
		readAt := time.Now()
		handle, err := s.getKey(ctx, primaryKey(primary), leader)
		if err != nil {
			return storage.Record{}, err
		}
		rec, err := s.lookup(ctx, string(handle), leader)
		if err == nil && rec.Primary == primary {
			s.cachePrimary(primary, rec.Handle, readAt)
			return rec, nil
		}
		if err != nil && !isNotFound(err) {
			return storage.Record{}, err
		}
	}
	return storage.Record{}, storage.ErrNotFound
}

// startBindingWatch starts the ordered consumer (headers only) on the
// handles' records and push lists that tells this server of rotations,
// deletions and push list changes made through any server: a deleted handle is forgotten (its inbox refuses
// appends from then on), and lookups of a changed one skip replicas that
// have not caught up yet.
func (s *Store) startBindingWatch(ctx context.Context) error {
	stream, err := s.js.Stream(ctx, s.regName)
	if err != nil {
		return fmt.Errorf("nats: reading stream %s: %w", s.regName, netErr(err))
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.regSubj + "h.>", s.regSubj + pushListKey(">")},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    stream.CachedInfo().State.LastSeq + 1,
		HeadersOnly:    true,
	})
	if err != nil {
		return fmt.Errorf("nats: creating the bindings watch: %w", netErr(err))
	}
	cc, err := cons.Consume(s.bindingChanged, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		s.log.Debug("bindings watch", "error", err)
		s.forgetRecords() // changes may reach it late
	}))
	if err != nil {
		return fmt.Errorf("nats: starting the bindings watch: %w", netErr(err))
	}
	s.bindings = cc
	return nil
}

func (s *Store) bindingChanged(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	if handle, ok := strings.CutPrefix(msg.Subject(), s.regSubj+pushListKey("")); ok {
		s.pushWritten(handle, meta.Sequence.Stream)
		return
	}
	handle, ok := strings.CutPrefix(msg.Subject(), s.regSubj+"h.")
	if !ok {
		return
	}
	deleted := kvDeleted(msg.Headers().Get(hdrKVOp))
	// Every write but a first registration changes what a lookup here may
	// have cached (a registration after a deletion follows the deletion's).
	if deleted || msg.Headers().Get(hdrBindingOp) != "register" {
		s.noteChanged(handle, meta.Sequence.Stream)
	}
	if deleted {
		s.forgetInbox(handle)
	}
}

// inboxFloor is the InboxFloor of handle's record, from the leader.
func (s *Store) inboxFloor(ctx context.Context, handle string) (uint64, error) {
	k, err := s.leaderKey(ctx, handleKey(handle))
	if err != nil || !k.live() {
		return 0, err
	}
	return recordFloor(k.data), nil
}
