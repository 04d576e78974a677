package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/synadia-io/orbit.go/natsext"

	"github.com/kezchat/kez/storage"
)

// hdrReceivedAt carries the message's received_at (unix ms), stamped by the
// server that accepted it, so that the 201 answer and later reads agree.
const hdrReceivedAt = "Kez-Received-At"

// payloadOverhead is room for the subject and headers next to an envelope.
const payloadOverhead = 512

// hdrNumPending is how many matching messages follow, in direct batch get answers.
const hdrNumPending = "Nats-Num-Pending"

// Append publishes the envelope to the handle's subject and returns once
// the stream has stored it (on a quorum of replicas, each fsynced as the
// servers' sync_interval says).
//
// The cap: the stream's per-subject limit (Options.MaxInbox, or larger if
// another server asked for more) is enforced by the server, exactly, even
// under concurrent sends. A maxInbox smaller than the stream's limit (a
// server configured lower than the stream, or a test) is enforced here:
// count, then publish only if the inbox's last sequence is still the one
// counted, so it is exact as well, at the price of two more requests.
// maxInbox 0 leaves only the stream's limit.
func (s *Store) Append(ctx context.Context, handle string, envelope []byte, maxInbox int) (storage.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return storage.Message{}, err
	}
	if err := s.exists(ctx, handle); err != nil {
		return storage.Message{}, err
	}
	subj := s.inboxSubj + handle
	now := time.Now().UnixMilli()
	msg := natsio.NewMsg(subj)
	msg.Data = envelope
	// A fresh id per call: when an answer is lost (leader change, timeout)
	// the retried publish is recognised by the stream and stored once.
	msg.Header.Set(jetstream.MsgIDHeader, nuid.Next())
	msg.Header.Set(hdrReceivedAt, strconv.FormatInt(now, 10))
	if s.maxPayload > 0 && len(envelope)+payloadOverhead > s.maxPayload {
		return storage.Message{}, fmt.Errorf("nats: a %d-byte envelope exceeds the servers' max_payload (%d bytes); raise max_payload or lower max_envelope", len(envelope), s.maxPayload)
	}
	s.mu.Lock()
	streamCap := s.streamMI
	s.mu.Unlock()
	var ack *pubAck
	var err error
	if maxInbox > 0 && (streamCap <= 0 || int64(maxInbox) < streamCap) {
		ack, err = s.appendCapped(ctx, msg, maxInbox)
	} else {
		ack, err = s.publish(ctx, msg)
	}
	if err != nil {
		if isCode(err, errCodeStoreFailed) && strings.Contains(err.Error(), "per subject") {
			return storage.Message{}, storage.ErrInboxFull
		}
		return storage.Message{}, err
	}
	return storage.Message{Seq: ack.Seq, ReceivedAt: now, Envelope: envelope}, nil
}

// appendCapped enforces a cap below the stream's with optimistic
// concurrency on the inbox's last sequence.
func (s *Store) appendCapped(ctx context.Context, msg *natsio.Msg, maxInbox int) (*pubAck, error) {
	for {
		count, last, err := s.countInbox(ctx, msg.Subject)
		if err != nil {
			return nil, err
		}
		if count >= uint64(maxInbox) {
			return nil, storage.ErrInboxFull
		}
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
		ack, err := s.publish(ctx, msg)
		if isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
			continue // another message arrived meanwhile: count again
		}
		return ack, err
	}
}

// countInbox asks the leader for the sequence of a subject's last message
// and then how many it holds. In that order the pair is safe to publish on
// with the last sequence expected: a message stored in between makes the
// count higher (and the inbox is that full) or the publish fail.
func (s *Store) countInbox(ctx context.Context, subj string) (count, last uint64, err error) {
	sm, err := s.leaderGet(ctx, s.inboxName, map[string]any{"last_by_subj": subj})
	switch {
	case err == nil:
		last = sm.Seq
	case !errors.Is(err, storage.ErrNotFound):
		return 0, 0, err
	}
	var info struct {
		apiResponse
		State struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
	}
	if err := s.api(ctx, "STREAM.INFO."+s.inboxName, map[string]any{"subjects_filter": subj}, &info); err != nil {
		return 0, 0, err
	}
	return info.State.Subjects[subj], last, nil
}

// publish sends msg to the stream and waits for its acknowledgement,
// retrying what may succeed later (no leader, lost answer) until ctx ends:
// the message id makes a retry of a publish that was stored harmless.
func (s *Store) publish(ctx context.Context, msg *natsio.Msg) (*pubAck, error) {
	return retry(ctx, func(ctx context.Context) (*pubAck, error) {
		reply, err := s.nc.RequestMsgWithContext(ctx, msg)
		if err != nil {
			return nil, netErr(err)
		}
		return decodeAck(reply)
	})
}

// fromStored decodes a message from the leader get API.
func (s *Store) fromStored(sm *storedMsg) storage.Message {
	m := storage.Message{Seq: sm.Seq, ReceivedAt: sm.Time.UnixMilli(), Envelope: sm.Data}
	if len(sm.Header) > 0 {
		if h, err := decodeHeaders(sm.Header); err == nil {
			if at, err := strconv.ParseInt(h.Get(hdrReceivedAt), 10, 64); err == nil {
				m.ReceivedAt = at
			}
		}
	}
	return m
}

// receivedAt reads the stamp of a delivered or directly fetched message.
func receivedAt(h natsio.Header, fallback time.Time) int64 {
	if at, err := strconv.ParseInt(h.Get(hdrReceivedAt), 10, 64); err == nil {
		return at
	}
	return fallback.UnixMilli()
}

// Read returns up to limit messages with seq > since in one direct batch
// get by subject. Any replica may answer a direct get, and a follower can
// lag the leader by a few messages; so when the answer stops short of the
// last message the feed has delivered for this inbox (or on the first read
// of an inbox by this server), the rest is read from the leader. A stream
// that subscribed to the hub before calling Read thus never misses a
// message the feed delivered before it subscribed.
func (s *Store) Read(ctx context.Context, handle string, since uint64, limit int) ([]storage.Message, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return nil, false, err
	}
	if err := s.exists(ctx, handle); err != nil {
		return nil, false, err
	}
	if limit <= 0 {
		return nil, false, nil
	}
	subj := s.inboxSubj + handle
	s.mu.Lock()
	seen := s.seen[handle]
	verified, checked := s.verified[handle]
	s.mu.Unlock()
	msgs, more, err := s.readDirect(ctx, subj, since, limit)
	if err != nil {
		return nil, false, err
	}
	last := since
	if len(msgs) > 0 {
		last = msgs[len(msgs)-1].Seq
	}
	if more || (checked && seen <= max(last, verified)) {
		return msgs, more, nil
	}
	// Possibly stale, or the first read of this inbox here (the feed only
	// knows what was stored since this server started, and a follower
	// that is catching up answers direct gets once 90% synchronized):
	// finish from the leader. Usually one request that finds nothing.
	for len(msgs) < limit {
		sm, err := s.leaderGet(ctx, s.inboxName, map[string]any{"seq": last + 1, "next_by_subj": subj})
		if errors.Is(err, storage.ErrNotFound) {
			break
		}
		if err != nil {
			return nil, false, err
		}
		m := s.fromStored(sm)
		msgs = append(msgs, m)
		last = m.Seq
	}
	if len(msgs) == limit {
		_, err := s.leaderGet(ctx, s.inboxName, map[string]any{"seq": last + 1, "next_by_subj": subj})
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, false, err
		}
		more = err == nil
	}
	s.mu.Lock()
	s.verified[handle] = max(s.verified[handle], seen, last)
	s.mu.Unlock()
	return msgs, more, nil
}

// readDirect is one direct batch get: up to limit messages of subj from
// sequence since+1, and whether more are stored.
func (s *Store) readDirect(ctx context.Context, subj string, since uint64, limit int) ([]storage.Message, bool, error) {
	type page struct {
		msgs []storage.Message
		more bool
	}
	// A large page may take long to transfer: each attempt gets what is
	// left of the call; only failures that come at once are retried.
	p, err := retryEach(ctx, s.timeout, func(ctx context.Context) (page, error) {
		msgs, more, err := s.readDirectOnce(ctx, subj, since, limit)
		return page{msgs, more}, err
	})
	return p.msgs, p.more, err
}

func (s *Store) readDirectOnce(ctx context.Context, subj string, since uint64, limit int) ([]storage.Message, bool, error) {
	req := natsio.NewMsg(s.apiPrefix + "DIRECT.GET." + s.inboxName)
	req.Data = fmt.Appendf(nil, `{"seq":%d,"next_by_subj":%q,"batch":%d}`, since+1, subj, limit)
	var status, desc, pending string
	replies, err := natsext.RequestManyMsg(ctx, s.nc, req, natsext.RequestManySentinel(func(m *natsio.Msg) bool {
		if st := m.Header.Get("Status"); st != "" && len(m.Data) == 0 {
			status, desc, pending = st, m.Header.Get("Description"), m.Header.Get(hdrNumPending)
			return true
		}
		return false
	}))
	if err != nil {
		return nil, false, netErr(err)
	}
	var msgs []storage.Message
	for m, err := range replies {
		if err != nil {
			return nil, false, netErr(err)
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("nats: direct get answer without a sequence")
		}
		ts, _ := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
		msgs = append(msgs, storage.Message{Seq: seq, ReceivedAt: receivedAt(m.Header, ts), Envelope: m.Data})
	}
	switch status {
	case "404":
		return nil, false, nil
	case "204":
		np, _ := strconv.ParseUint(pending, 10, 64)
		return msgs, np > 0, nil
	case "":
		if err := ctx.Err(); err != nil {
			return nil, false, netErr(err)
		}
		return nil, false, errors.New("nats: direct get ended without an end-of-batch marker")
	}
	return nil, false, fmt.Errorf("nats: direct get: %s %s", status, desc)
}

// Ack purges the handle's subject below upto+1: one request to the leader.
func (s *Store) Ack(ctx context.Context, handle string, upto uint64) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if err := s.exists(ctx, handle); err != nil {
		return 0, err
	}
	if upto == 0 {
		return 0, nil
	}
	req := map[string]any{"filter": s.inboxSubj + handle}
	if upto < ^uint64(0) {
		req["seq"] = upto + 1 // purges below seq
	}
	var resp struct {
		apiResponse
		Purged uint64 `json:"purged"`
	}
	if err := s.api(ctx, "STREAM.PURGE."+s.inboxName, req, &resp); err != nil {
		return 0, err
	}
	return int(resp.Purged), nil
}

// Expire purges every inbox message stored before cutoff. The stream's
// MaxAge does the same on its own; this pass also applies a retention
// shorter than the stream's (see Options.Retention) and serves tests.
func (s *Store) Expire(ctx context.Context, cutoff time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	var info struct {
		apiResponse
		State jetstream.StreamState `json:"state"`
	}
	if err := s.api(ctx, "STREAM.INFO."+s.inboxName, nil, &info); err != nil {
		return 0, err
	}
	if info.State.Msgs == 0 || !info.State.FirstTime.Before(cutoff) {
		return 0, nil
	}
	// The first message at or after cutoff; everything before it goes.
	upto := info.State.LastSeq + 1
	sm, err := s.leaderGet(ctx, s.inboxName, map[string]any{"start_time": cutoff.UTC()})
	switch {
	case err == nil:
		upto = sm.Seq
	case !errors.Is(err, storage.ErrNotFound):
		return 0, err
	}
	var resp struct {
		apiResponse
		Purged uint64 `json:"purged"`
	}
	if err := s.api(ctx, "STREAM.PURGE."+s.inboxName, map[string]any{"filter": s.inboxSubj + "*", "seq": upto}, &resp); err != nil {
		return 0, err
	}
	return int(resp.Purged), nil
}
