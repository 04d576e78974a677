package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/natsext"

	"github.com/kezchat/kez/storage"
)

// Headers of a stored message.
const (
	// hdrReceivedAt carries the message's received_at (unix ms), stamped by
	// the server that accepted it, so that the 201 answer and later reads
	// agree.
	hdrReceivedAt = "Kez-Received-At"
	// hdrFrom and hdrFromAddr: the sender as authenticated at receipt.
	hdrFrom     = "Kez-From"
	hdrFromAddr = "Kez-From-Addr"
	// hdrRequest "1": stored as a message request (the sender was not
	// accepted). Reads compute Request from the current lists, see Read.
	hdrRequest = "Kez-Request"
	// hdrAttempt names the Append call that stored a message or record.
	hdrAttempt = "Kez-Attempt"
	// hdrSeq: in an idempotency record, the seq of the message.
	hdrSeq = "Kez-Seq"
)

// payloadOverhead is room for the subject and headers next to an envelope.
const payloadOverhead = 1024

// hdrNumPending is how many matching messages follow, in direct batch get answers.
const hdrNumPending = "Nats-Num-Pending"

// Subjects of an inbox.
func (s *Store) msgSubj(handle string) string     { return s.inboxSubj + handle + ".m" }
func (s *Store) inboxFilter(handle string) string { return s.inboxSubj + handle + ".>" }
func (s *Store) requestsFilter(handle string) string {
	return s.inboxSubj + handle + ".r.*.*"
}
func (s *Store) senderRequestsFilter(handle, primary string) string {
	return s.inboxSubj + handle + ".r." + senderToken(primary) + ".*"
}
func (s *Store) requestSubj(handle, primary string, epoch uint64) string {
	return s.inboxSubj + handle + ".r." + senderToken(primary) + "." + strconv.FormatUint(epoch, 10)
}

// requestOf parses a request subject of handle's inbox.
func (s *Store) requestOf(handle, subj string) (token string, epoch uint64, ok bool) {
	rest, ok := strings.CutPrefix(subj, s.inboxSubj+handle+".r.")
	if !ok {
		return "", 0, false
	}
	token, e, ok := strings.Cut(rest, ".")
	if !ok {
		return "", 0, false
	}
	epoch, err := strconv.ParseUint(e, 10, 64)
	return token, epoch, err == nil
}

// v1Subj is where v1 stored a handle's messages.
func (s *Store) v1Subj(handle string) string { return s.inboxSubj + handle }

// publish sends msg to the stream and waits for its acknowledgement,
// retrying what may succeed later (no leader, lost answer) until ctx ends.
// Only for messages that a retry cannot store twice: with a message id,
// or an expected last subject sequence.
func (s *Store) publish(ctx context.Context, msg *natsio.Msg) (*pubAck, error) {
	return retry(ctx, func(ctx context.Context) (*pubAck, error) {
		return s.publishOnce(ctx, msg)
	})
}

// publishOnce is one attempt of publish.
func (s *Store) publishOnce(ctx context.Context, msg *natsio.Msg) (*pubAck, error) {
	reply, err := s.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return nil, netErr(err)
	}
	return decodeAck(reply)
}

// rawMsg is a stored message as a direct or leader get returns it.
type rawMsg struct {
	seq     uint64
	subject string
	hdr     natsio.Header
	data    []byte
	time    time.Time
}

func rawFromStored(sm *storedMsg) rawMsg {
	m := rawMsg{seq: sm.Seq, subject: sm.Subject, data: sm.Data, time: sm.Time}
	if len(sm.Header) > 0 {
		m.hdr, _ = decodeHeaders(sm.Header)
	}
	return m
}

// receivedAt reads the stamp of a stored message.
func receivedAt(h natsio.Header, fallback time.Time) int64 {
	if at, err := strconv.ParseInt(h.Get(hdrReceivedAt), 10, 64); err == nil {
		return at
	}
	return fallback.UnixMilli()
}

// envelopeFrom reads the sender of a v1 message, stored without headers.
func envelopeFrom(env []byte) (from, fromAddr string) {
	var e struct {
		From     string `json:"from"`
		FromAddr string `json:"from_addr"`
	}
	_ = json.Unmarshal(env, &e)
	return e.From, e.FromAddr
}

// message turns a stored message of handle's inbox into what callers see.
// Whether a message stored as a request still is one is computed from the
// lists as they are now (see contactList: accepting a sender turns its
// stored requests into messages for good). A request of a blocked sender
// is not shown (visible false): Block deletes them, this covers one stored
// concurrently. contacts nil: not known here, a request is shown as one.
func (s *Store) message(handle string, r rawMsg, contacts *contactList) (m storage.Message, visible bool) {
	m = storage.Message{Seq: r.seq, ReceivedAt: receivedAt(r.hdr, r.time), Envelope: r.data}
	rest := strings.TrimPrefix(r.subject, s.inboxSubj+handle)
	if rest == "" { // v1: no headers; never a request
		m.From, m.FromAddr = envelopeFrom(r.data)
		return m, true
	}
	m.From, m.FromAddr = r.hdr.Get(hdrFrom), r.hdr.Get(hdrFromAddr)
	if m.From == "" {
		m.From, _ = envelopeFrom(r.data)
	}
	if _, epoch, ok := s.requestOf(handle, r.subject); ok {
		m.Request = true
		if contacts != nil {
			if contacts.hidden(m.From, epoch) {
				return m, false
			}
			m.Request = contacts.isRequest(m.From, epoch)
		}
	}
	return m, true
}

// isRequestSubj reports whether subj is a request in handle's inbox.
func (s *Store) isRequestSubj(handle, subj string) bool {
	return strings.HasPrefix(subj, s.inboxSubj+handle+".r.")
}

// Read returns up to limit messages with seq > since. Both kinds of
// message come in one seek by the filter <prefix>.inbox.<handle>.> (a
// direct batch get: any replica answers), completed from the leader when
// it may be stale (see readFilter); v1 messages, if the inbox still has
// some, before them.
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
	var out []storage.Message
	for {
		raws, more, err := s.readPage(ctx, handle, since, limit-len(out))
		if err != nil {
			return nil, false, err
		}
		var contacts *contactList
		for _, r := range raws {
			if s.isRequestSubj(handle, r.subject) {
				if contacts, err = s.contactsOf(ctx, handle); err != nil {
					return nil, false, err
				}
				break
			}
		}
		for _, r := range raws {
			if m, ok := s.message(handle, r, contacts); ok {
				out = append(out, m)
			}
		}
		// Go on only past hidden messages, so a page is never empty
		// while more follow.
		if !more || len(out) == limit || len(raws) == 0 {
			return out, more, nil
		}
		since = raws[len(raws)-1].seq
	}
}

// readPage reads up to limit stored messages of handle with seq > since:
// v1 ones first (all older than any other), then the rest.
func (s *Store) readPage(ctx context.Context, handle string, since uint64, limit int) ([]rawMsg, bool, error) {
	v1, err := s.v1LastOf(ctx, handle)
	if err != nil {
		return nil, false, err
	}
	var raws []rawMsg
	if since < v1 {
		var more bool
		raws, more, err = s.readFilter(ctx, handle, s.v1Subj(handle), since, limit, false)
		if err != nil {
			return nil, false, err
		}
		if len(raws) == 0 && !more && since == 0 {
			s.setV1Last(handle, 0) // acknowledged or expired meanwhile
		}
		if len(raws) == limit {
			if !more {
				rest, _, err := s.readFilter(ctx, handle, s.inboxFilter(handle), since, 1, true)
				if err != nil {
					return nil, false, err
				}
				more = len(rest) > 0
			}
			return raws, more, nil
		}
	}
	rest, more, err := s.readFilter(ctx, handle, s.inboxFilter(handle), since, limit-len(raws), true)
	if err != nil {
		return nil, false, err
	}
	return append(raws, rest...), more, nil
}

// v1LastOf returns the seq of handle's last v1 message, 0 if it has none:
// asked of the leader once per inbox, on streams that held v1 messages.
// v1 messages are never added, so the answer only ever goes down to 0.
func (s *Store) v1LastOf(ctx context.Context, handle string) (uint64, error) {
	s.mu.Lock()
	all := s.v1Last
	v, ok := s.v1[handle]
	s.mu.Unlock()
	if all == 0 || ok {
		return v, nil
	}
	sm, err := s.leaderGet(ctx, s.inboxName, map[string]any{"last_by_subj": s.v1Subj(handle)})
	switch {
	case err == nil:
		v = sm.Seq
	case errors.Is(err, storage.ErrNotFound):
		v = 0
	default:
		return 0, err
	}
	s.setV1Last(handle, v)
	return v, nil
}

func (s *Store) setV1Last(handle string, seq uint64) {
	s.mu.Lock()
	s.v1[handle] = seq
	s.mu.Unlock()
}

// readFilter returns up to limit messages on filter with seq > since in
// one direct batch get. Any replica may answer a direct get, and a
// follower can lag the leader by a few messages; so when the answer stops
// short of the last message the feed has delivered for this inbox (or on
// the first read of an inbox by this server, or when fromFeed is false),
// the rest is read from the leader. A stream that subscribed to the hub
// before calling Read thus never misses a message the feed delivered
// before it subscribed.
func (s *Store) readFilter(ctx context.Context, handle, filter string, since uint64, limit int, fromFeed bool) ([]rawMsg, bool, error) {
	s.mu.Lock()
	seen := s.seen[handle]
	verified, checked := s.verified[handle]
	s.mu.Unlock()
	msgs, more, err := s.readDirect(ctx, filter, since, limit)
	if err != nil {
		return nil, false, err
	}
	last := since
	if len(msgs) > 0 {
		last = msgs[len(msgs)-1].seq
	}
	if more || (fromFeed && checked && seen <= max(last, verified)) {
		return msgs, more, nil
	}
	// Possibly stale, or the first read of this inbox here (the feed only
	// knows what was stored since this server started, and a follower
	// that is catching up answers direct gets once 90% synchronized):
	// finish from the leader. Usually one request that finds nothing.
	for len(msgs) < limit {
		sm, err := s.leaderGet(ctx, s.inboxName, map[string]any{"seq": last + 1, "next_by_subj": filter})
		if errors.Is(err, storage.ErrNotFound) {
			break
		}
		if err != nil {
			return nil, false, err
		}
		m := rawFromStored(sm)
		msgs = append(msgs, m)
		last = m.seq
	}
	if len(msgs) == limit {
		_, err := s.leaderGet(ctx, s.inboxName, map[string]any{"seq": last + 1, "next_by_subj": filter})
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, false, err
		}
		more = err == nil
	}
	if fromFeed {
		s.mu.Lock()
		s.verified[handle] = max(s.verified[handle], seen, last)
		s.mu.Unlock()
	}
	return msgs, more, nil
}

// readDirect is one direct batch get: up to limit messages on filter from
// sequence since+1, and whether more are stored.
func (s *Store) readDirect(ctx context.Context, filter string, since uint64, limit int) ([]rawMsg, bool, error) {
	type page struct {
		msgs []rawMsg
		more bool
	}
	// A large page may take long to transfer: each attempt gets what is
	// left of the call; only failures that come at once are retried.
	p, err := retryEach(ctx, s.timeout, func(ctx context.Context) (page, error) {
		msgs, more, err := s.readDirectOnce(ctx, filter, since, limit)
		return page{msgs, more}, err
	})
	return p.msgs, p.more, err
}

func (s *Store) readDirectOnce(ctx context.Context, filter string, since uint64, limit int) ([]rawMsg, bool, error) {
	req := fmt.Appendf(nil, `{"seq":%d,"next_by_subj":%q,"batch":%d}`, since+1, filter, limit)
	return s.directBatch(ctx, s.inboxName, req)
}

// directBatch is one batched direct get on stream (any replica answers):
// the messages the request selects, and whether more are pending.
func (s *Store) directBatch(ctx context.Context, stream string, body []byte) ([]rawMsg, bool, error) {
	req := natsio.NewMsg(s.apiPrefix + "DIRECT.GET." + stream)
	req.Data = body
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
	var msgs []rawMsg
	for m, err := range replies {
		if err != nil {
			return nil, false, netErr(err)
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("nats: direct get answer without a sequence")
		}
		ts, _ := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
		msgs = append(msgs, rawMsg{seq: seq, subject: m.Header.Get(jetstream.SubjectHeader), hdr: m.Header, data: m.Data, time: ts})
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

// purge deletes the messages on filter with a seq below `below` (0: all)
// and returns how many: one request to the leader.
func (s *Store) purge(ctx context.Context, filter string, below uint64) (int, error) {
	req := map[string]any{"filter": filter}
	if below > 0 {
		req["seq"] = below
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

// Ack purges the handle's messages (and requests) below upto+1: one
// request to the leader (two while the inbox holds v1 messages). The
// idempotency records stay: an acknowledged message is still recognised
// when sent again.
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
	below := uint64(0)
	if upto < ^uint64(0) {
		below = upto + 1
	}
	n, err := s.purge(ctx, s.inboxFilter(handle), below)
	if err != nil {
		return 0, err
	}
	v1, err := s.v1LastOf(ctx, handle)
	if err != nil {
		return 0, err
	}
	if v1 > 0 {
		n1, err := s.purge(ctx, s.v1Subj(handle), below)
		if err != nil {
			return 0, err
		}
		n += n1
		if upto >= v1 {
			s.setV1Last(handle, 0)
		}
	}
	// Requests accepted since, up to upto, are gone: the stream's cap on
	// messages is exact again once none is left.
	c, err := s.contactsOf(ctx, handle)
	if err != nil {
		return 0, err
	}
	if c.converted > 0 && upto >= c.converted {
		_, err := s.updateContacts(ctx, handle, func(c *contactList) bool {
			if c.converted == 0 || c.converted > upto {
				return false
			}
			c.converted = 0
			return true
		})
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}

// Expire purges every inbox message stored before cutoff, and the
// idempotency records written before it. The stream's MaxAge does the
// same on its own; this pass also applies a retention shorter than the
// stream's (see Options.Retention) and serves tests.
func (s *Store) Expire(ctx context.Context, cutoff time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	// Records of messages stored here go first: each follows its message.
	s.waitRecords(ctx, "")
	for {
		to := s.expiredTo.Load()
		if cutoff.UnixMilli() <= to || s.expiredTo.CompareAndSwap(to, cutoff.UnixMilli()) {
			break
		}
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
	n, err := s.purge(ctx, s.inboxSubj+">", upto)
	if err != nil {
		return 0, err
	}
	if _, err := s.purge(ctx, s.idsSubj+">", upto); err != nil {
		return 0, err
	}
	return n, nil
}
