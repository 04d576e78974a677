package nats

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
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

// JetStream error codes Append tells apart.
const (
	errCodeDupInProcess = 10158 // a message with this id is being stored
)

// Append stores d in d.To's inbox, in the order of checks the interface
// gives. How each check holds with several servers sending at once:
//
//   - Duplicates. The message carries Nats-Msg-Id <handle>/<key> (key: a
//     hash of d.From and d.Sig), so the stream itself refuses a second copy
//     within its dedupe window (2 min), answering with the original seq,
//     even while the first is still being stored. Beyond the window the
//     idempotency record <prefix>.ids.<handle>.<key>.d, written once the
//     message is stored, answers: the message is published only if no
//     record of its key exists (expected last sequence 0 on
//     <prefix>.ids.<handle>.<key>.*), checked by the stream. Records go
//     with retention (the stream's MaxAge, Expire), not with Ack. A key
//     Expire forgot while the stream still knows the id (tests; retention
//     under 2 min) is stored again under the id <handle>/<key>~<old seq>.
//     Without a signature there is no key: no dedupe.
//   - Blocked: from the recipient's cached lists, confirmed by the leader
//     before refusing. A request also checks the leader's lists after it
//     is stored, and deletes the sender's requests if a Block came between.
//   - Accepted senders (the common case): published to
//     <prefix>.inbox.<handle>.m, whose cap is the stream's per-subject
//     limit with discard-new, exact under any concurrency: one round trip,
//     plus the record, published without waiting for it. When that limit
//     does not count everything MaxInbox must count (Limits.MaxInbox below
//     the stream's limit, requests accepted since they were stored, v1
//     messages), the message is counted as below instead.
//   - Requests, and counted caps: the key is claimed first (a pending
//     record, created only if absent, so concurrent copies wait for the
//     first one's outcome); then the leader counts (the filter's last
//     sequence, then per-subject totals) and the message is published with
//     Nats-Expected-Last-Subject-Sequence on that filter
//     (<prefix>.inbox.<handle>.r.*.* for requests: one check covers the
//     per-sender and the per-inbox limit, whatever the subject), so that a
//     request stored meanwhile through any server makes it fail and count
//     again. (Every request publish carries that check while a limit is
//     set: a replicated stream only sees requests in flight through it.)
//     Requests accepted since they were stored count as messages.
//
// What the cache can let through: a send through server B in the few
// milliseconds before B's watch brings a change made through server A
// (Unaccept, Block) is treated as from a contact: stored as an ordinary
// message (which Block would not delete either). Decisions against a
// sender (blocked, a request, over a limit) are made on the leader's
// state.
//
// Round trips: a contact's message 1 (and one record published without
// waiting); a request 7 (lists, claim, last sequence, counts, publish,
// record, lists again); a counted message 6 (claim, last sequence, lists,
// counts, publish, record).
func (s *Store) Append(ctx context.Context, d storage.Delivery, lim storage.Limits) (storage.Message, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return storage.Message{}, false, err
	}
	if err := s.exists(ctx, d.To); err != nil {
		return storage.Message{}, false, err
	}
	if s.maxPayload > 0 && len(d.Envelope)+payloadOverhead > s.maxPayload {
		return storage.Message{}, false, fmt.Errorf("nats: a %d-byte envelope exceeds the servers' max_payload (%d bytes); raise max_payload or lower max_envelope", len(d.Envelope), s.maxPayload)
	}
	if strings.ContainsAny(d.From+d.FromAddr, "\r\n") {
		return storage.Message{}, false, errors.New("nats: a sender with a line break")
	}
	op := &appendOp{s: s, d: d, lim: lim, now: time.Now().UnixMilli(), attempt: nuid.Next()}
	if d.Sig != "" {
		op.key = idemKey(d.From, d.Sig)
	}
	// The owner writing to its own inbox (a copy for its other devices,
	// SPEC §3) is never a stranger there.
	self := d.ToPrimary != "" && d.ToPrimary == d.From
	contacts, err := s.contactsOf(ctx, d.To)
	if err != nil {
		return storage.Message{}, false, err
	}
	if !self && !contacts.accepted[d.From] {
		// A request, or the cache lags: decide on the leader's lists.
		if contacts, err = s.loadContacts(ctx, d.To); err != nil {
			return storage.Message{}, false, err
		}
	}
	if !self && contacts.blocked[d.From] {
		return op.refuse(ctx, storage.ErrBlocked)
	}
	op.request = !self && !contacts.accepted[d.From]
	var m storage.Message
	var fresh bool
	switch {
	case !op.request:
		op.subj = s.msgSubj(d.To)
		counted, cerr := op.countsInbox(ctx, contacts)
		switch {
		case cerr != nil:
			err = cerr
		case counted:
			m, fresh, err = op.counted(ctx)
		default:
			m, fresh, err = op.direct(ctx)
		}
	default:
		op.leader = contacts
		op.epoch = contacts.epochs[d.From]
		op.subj = s.requestSubj(d.To, d.From, op.epoch)
		if lim.RequestLimit > 0 || lim.MaxRequests > 0 {
			m, fresh, err = op.counted(ctx)
		} else {
			m, fresh, err = op.direct(ctx)
		}
		if err == nil && fresh {
			err = op.recheck(ctx, m.Seq)
		}
	}
	if err != nil {
		return storage.Message{}, false, err
	}
	// Writing to someone accepts them in one's own inbox (only once the
	// message is stored: a refused one accepts nobody).
	if fresh && d.SenderHandle != "" && !self {
		if err := s.acceptBySending(ctx, d.SenderHandle, d.ToPrimary); err != nil {
			return storage.Message{}, false, err
		}
	}
	return m, fresh, nil
}

// recheck looks at the leader's lists again once a request is stored: a
// Block that came in between, and deleted the sender's requests before
// this one was stored, deletes this one too; an acceptance in between
// makes it a message, to be counted as one.
func (op *appendOp) recheck(ctx context.Context, seq uint64) error {
	s, d := op.s, op.d
	after, err := s.loadContacts(ctx, d.To)
	if err != nil {
		return err
	}
	if after.hidden(d.From, op.epoch) {
		if _, err := s.purge(ctx, op.subj, 0); err != nil {
			return err
		}
		return storage.ErrBlocked
	}
	if !after.isRequest(d.From, op.epoch) && after.converted < seq {
		_, err := s.updateContacts(ctx, d.To, func(c *contactList) bool {
			if c.converted >= seq {
				return false
			}
			c.converted = seq
			return true
		})
		return err
	}
	return nil
}

// idemKey is the idempotency key of a delivery: a subject token.
func idemKey(from, sig string) string {
	sum := sha256.Sum256([]byte(from + "\x00" + sig))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// appendOp is one Append call.
type appendOp struct {
	s       *Store
	d       storage.Delivery
	lim     storage.Limits
	now     int64  // received_at
	attempt string // names this call in what it stores
	key     string // idempotency key; "" without a signature
	request bool
	epoch   uint64 // a request's epoch of its sender
	subj    string
	// leader: the recipient's lists just read from the leader, for the
	// first count (later ones read them again).
	leader *contactList
}

// countsInbox reports whether an accepted sender's message must be
// counted against Limits.MaxInbox here rather than by the stream's
// per-subject limit on .m: when the limit asked is lower than the
// stream's, or the inbox may hold requests accepted since (contacts:
// the cached lists) or v1 messages.
func (op *appendOp) countsInbox(ctx context.Context, contacts *contactList) (bool, error) {
	if op.lim.MaxInbox <= 0 {
		return false, nil
	}
	op.s.mu.Lock()
	streamCap := op.s.streamMI
	op.s.mu.Unlock()
	if streamCap <= 0 || int64(op.lim.MaxInbox) < streamCap || contacts.converted > 0 {
		return true, nil
	}
	v1, err := op.s.v1LastOf(ctx, op.d.To)
	return v1 > 0, err
}

// stored is the message as stored at seq.
func (op *appendOp) stored(seq uint64, receivedAt int64) storage.Message {
	return storage.Message{Seq: seq, ReceivedAt: receivedAt, From: op.d.From, FromAddr: op.d.FromAddr,
		Request: op.request, Envelope: op.d.Envelope}
}

// fullErr is the error of a full inbox for this kind of message.
func (op *appendOp) fullErr() error {
	if op.request {
		return storage.ErrRequestLimit
	}
	return storage.ErrInboxFull
}

// msgID is the message's Nats-Msg-Id: the same for every copy of one
// signed envelope to one inbox; without a key, one per call (so that a
// retried publish is still stored once).
func (op *appendOp) msgID() string {
	if op.key == "" {
		return nuid.Next()
	}
	return op.d.To + "/" + op.key
}

func (op *appendOp) message(msgID string) *natsio.Msg {
	msg := natsio.NewMsg(op.subj)
	msg.Data = op.d.Envelope
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	msg.Header.Set(hdrReceivedAt, strconv.FormatInt(op.now, 10))
	if op.d.From != "" {
		msg.Header.Set(hdrFrom, op.d.From)
	}
	if op.d.FromAddr != "" {
		msg.Header.Set(hdrFromAddr, op.d.FromAddr)
	}
	if op.request {
		msg.Header.Set(hdrRequest, "1")
	}
	msg.Header.Set(hdrAttempt, op.attempt)
	return msg
}

func expect(msg *natsio.Msg, filter string, seq uint64) {
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
	msg.Header.Set(hdrExpectedLastSubjSeqSubj, filter)
}

// hdrExpectedLastSubjSeqSubj makes the expected last subject sequence
// check apply to another subject, or a filter (nats-server 2.11+).
const hdrExpectedLastSubjSeqSubj = "Nats-Expected-Last-Subject-Sequence-Subject"

func perSubjectFull(err error) bool {
	return isCode(err, errCodeStoreFailed) && strings.Contains(err.Error(), "per subject")
}

func conflict(err error) bool {
	return isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst, errCodeDupInProcess)
}

// direct publishes with the stream's checks only: the message id, the
// absence of a record of the key, the per-subject cap.
func (op *appendOp) direct(ctx context.Context) (storage.Message, bool, error) {
	id := op.msgID()
	for round := 0; ; round++ {
		msg := op.message(id)
		if op.key != "" {
			expect(msg, op.s.recordFilter(op.d.To, op.key), 0)
		}
		ack, err := op.s.publish(ctx, msg)
		switch {
		case err == nil && !ack.Duplicate:
			if op.key != "" {
				op.s.writeRecordAsync(op.d.To, op.key, ack.Seq, op.now, op.attempt)
			}
			return op.stored(ack.Seq, op.now), true, nil
		case err == nil:
			m, fresh, forgotten, err := op.duplicate(ctx, ack.Seq)
			if forgotten {
				id = op.msgID() + "~" + strconv.FormatUint(ack.Seq, 10)
				continue
			}
			return m, fresh, err
		case isCode(err, errCodeWrongLastSeq): // a record of the key exists
			rec, err := op.resolve(ctx)
			if err != nil {
				return storage.Message{}, false, err
			}
			if rec != nil && rec.done {
				return op.stored(rec.msgSeq, rec.at), rec.attempt == op.attempt, nil
			}
		case conflict(err): // another copy is being stored
		case perSubjectFull(err):
			return storage.Message{}, false, op.fullErr()
		default:
			return storage.Message{}, false, err
		}
		if err := sleep(ctx, backoff(round)); err != nil {
			return storage.Message{}, false, err
		}
	}
}

// duplicate finds the original of a message the stream recognised by its
// id as stored at seq. forgotten: Expire forgot the key while the stream
// still knows the id (a cutoff within the dedupe window: tests, or a
// retention that short): store it again, under another id.
func (op *appendOp) duplicate(ctx context.Context, seq uint64) (m storage.Message, fresh, forgotten bool, err error) {
	rec, err := op.resolve(ctx)
	if err != nil {
		return storage.Message{}, false, false, err
	}
	if rec != nil && rec.done {
		return op.stored(rec.msgSeq, rec.at), rec.attempt == op.attempt, false, nil
	}
	sm, err := op.s.leaderGet(ctx, op.s.inboxName, map[string]any{"seq": seq})
	switch {
	case err == nil && strings.HasPrefix(sm.Subject, op.s.inboxSubj+op.d.To+"."):
		r := rawFromStored(sm)
		at := receivedAt(r.hdr, r.time)
		if rec == nil { // its writer may have failed: write it now
			op.s.writeRecordAsync(op.d.To, op.key, seq, at, r.hdr.Get(hdrAttempt))
		}
		return op.stored(seq, at), r.hdr.Get(hdrAttempt) == op.attempt, false, nil
	case err != nil && !errors.Is(err, storage.ErrNotFound):
		return storage.Message{}, false, false, err
	}
	if op.s.expiredTo.Load() > time.Now().Add(-dedupeWindow).UnixMilli() {
		return storage.Message{}, false, true, nil
	}
	// The original was in an inbox of the handle deleted since (then
	// registered again): a new message here.
	if floor, err := op.s.inboxFloor(ctx, op.d.To); err != nil {
		return storage.Message{}, false, false, err
	} else if seq <= floor {
		return storage.Message{}, false, true, nil
	}
	// Acknowledged, and its record lost with the server that stored it:
	// still a copy. Its received_at is lost too; this answer's stands
	// for it from now on.
	op.s.writeRecordAsync(op.d.To, op.key, seq, op.now, "")
	return op.stored(seq, op.now), false, false, nil
}

// refuse returns err unless d is a copy of a stored message, checked
// first (SPEC §2.5: a resend gets its receipt even if it would now be
// refused).
func (op *appendOp) refuse(ctx context.Context, err error) (storage.Message, bool, error) {
	if op.key == "" {
		return storage.Message{}, false, err
	}
	rec, rerr := op.resolve(ctx)
	if rerr != nil {
		return storage.Message{}, false, rerr
	}
	if rec != nil && rec.done {
		return op.stored(rec.msgSeq, rec.at), false, nil
	}
	return storage.Message{}, false, err
}

// counted stores the message after counting on the leader, exactly under
// concurrency (see Append).
func (op *appendOp) counted(ctx context.Context) (storage.Message, bool, error) {
	var claim uint64
	if op.key != "" {
		var rec *idRecord
		var err error
		claim, rec, err = op.claim(ctx)
		if err != nil {
			return storage.Message{}, false, err
		}
		if rec != nil {
			return op.stored(rec.msgSeq, rec.at), rec.attempt == op.attempt, nil
		}
	}
	release := func() {
		if claim == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), op.s.timeout)
		defer cancel()
		if _, err := op.s.purge(ctx, op.s.claimSubj(op.d.To, op.key), claim+1); err != nil {
			op.s.log.Warn("could not release an idempotency claim; a resend waits until it is stale", "error", err)
		}
	}
	finish := func(seq uint64, at int64, attempt string) {
		if claim == 0 {
			return
		}
		if err := op.s.writeRecord(ctx, op.d.To, op.key, claim, seq, at, attempt); err != nil {
			op.s.log.Warn("could not write an idempotency record", "error", err)
		}
	}
	id := op.msgID()
	for round := 0; ; round++ {
		filter, last, full, err := op.count(ctx)
		if err != nil {
			release()
			return storage.Message{}, false, err
		}
		if full {
			release()
			return storage.Message{}, false, op.fullErr()
		}
		msg := op.message(id)
		expect(msg, filter, last)
		ack, err := op.s.publishOnce(ctx, msg)
		if err != nil && temporary(err) && !errors.Is(err, ErrUnavailable) {
			// Stored or not? If it was, it is the message right after
			// the last one counted on the filter.
			if sm, gerr := op.s.leaderGet(ctx, op.s.inboxName, map[string]any{"seq": last + 1, "next_by_subj": filter}); gerr == nil {
				if r := rawFromStored(sm); r.hdr.Get(hdrAttempt) == op.attempt {
					ack, err = &pubAck{Seq: r.seq}, nil
				}
			}
		}
		switch {
		case err == nil && !ack.Duplicate:
			finish(ack.Seq, op.now, op.attempt)
			return op.stored(ack.Seq, op.now), true, nil
		case err == nil:
			m, fresh, forgotten, err := op.duplicate(ctx, ack.Seq)
			if forgotten {
				id = op.msgID() + "~" + strconv.FormatUint(ack.Seq, 10)
				continue
			}
			if err == nil {
				finish(m.Seq, m.ReceivedAt, "")
			}
			return m, fresh, err
		case conflict(err), err != nil && temporary(err) && !errors.Is(err, ErrUnavailable) && ctx.Err() == nil:
			// Stored meanwhile through some server: count again.
		case perSubjectFull(err):
			release()
			return storage.Message{}, false, op.fullErr()
		default:
			release()
			return storage.Message{}, false, err
		}
		if err := sleep(ctx, backoff(round)); err != nil {
			release()
			return storage.Message{}, false, err
		}
	}
}

// count asks the leader what the inbox holds: the filter to publish on
// with its last sequence, and whether the message would exceed a limit.
// The last sequence comes first: a message stored after it makes the
// count higher or the publish fail, never a count too low to publish on.
// For requests the filter is every request subject of the inbox, so one
// check covers both request limits.
func (op *appendOp) count(ctx context.Context) (filter string, last uint64, full bool, err error) {
	s, to := op.s, op.d.To
	filter = op.subj
	if op.request {
		filter = s.requestsFilter(to)
	}
	sm, err := s.leaderGet(ctx, s.inboxName, map[string]any{"last_by_subj": filter})
	switch {
	case err == nil:
		last = sm.Seq
	case !errors.Is(err, storage.ErrNotFound):
		return "", 0, false, err
	}
	contacts := op.leader
	op.leader = nil
	if contacts == nil {
		if contacts, err = s.loadContacts(ctx, to); err != nil {
			return "", 0, false, err
		}
	}
	// One answer for every subject of the inbox: messages and requests.
	counts, err := s.subjectCounts(ctx, s.inboxFilter(to))
	if err != nil {
		return "", 0, false, err
	}
	// Who each request subject is from, and whether it still is one.
	type sender struct {
		accepted, blocked bool
		epoch             uint64
	}
	senders := map[string]*sender{}
	of := func(p string) *sender {
		t := senderToken(p)
		if senders[t] == nil {
			senders[t] = &sender{}
		}
		return senders[t]
	}
	for p := range contacts.accepted {
		of(p).accepted = true
	}
	for p := range contacts.blocked {
		of(p).blocked = true
	}
	for p, e := range contacts.epochs {
		of(p).epoch = e
	}
	var mine, pending, converted uint64
	for subj, n := range counts {
		token, epoch, ok := s.requestOf(to, subj)
		if !ok {
			continue
		}
		from := senders[token]
		if from == nil {
			from = &sender{}
		}
		switch {
		case from.accepted || epoch < from.epoch:
			converted += n
		case from.blocked: // deleted by the block
		default:
			pending += n
			if subj == op.subj {
				mine = n
			}
		}
	}
	if op.request {
		full = op.lim.RequestLimit > 0 && mine >= uint64(op.lim.RequestLimit) ||
			op.lim.MaxRequests > 0 && pending >= uint64(op.lim.MaxRequests)
		return filter, last, full, nil
	}
	n := counts[op.subj] + converted
	if v1, err := s.v1LastOf(ctx, to); err != nil {
		return "", 0, false, err
	} else if v1 > 0 {
		old, err := s.subjectCounts(ctx, s.v1Subj(to))
		if err != nil {
			return "", 0, false, err
		}
		n += old[s.v1Subj(to)]
	}
	return filter, last, n >= uint64(op.lim.MaxInbox), nil
}

// subjectCounts asks the leader how many messages each subject matching
// filter holds.
func (s *Store) subjectCounts(ctx context.Context, filter string) (map[string]uint64, error) {
	var info struct {
		apiResponse
		State struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
	}
	if err := s.api(ctx, "STREAM.INFO."+s.inboxName, map[string]any{"subjects_filter": filter}, &info); err != nil {
		return nil, err
	}
	return info.State.Subjects, nil
}
