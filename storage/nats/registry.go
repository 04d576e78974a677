package nats

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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
		return decodeAck(reply)
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

// Register claims the handle key, the primary key and the invite key in
// one atomic batch, each only if it has never been written. When the batch
// is refused, leader reads tell which claim failed.
func (s *Store) Register(ctx context.Context, rec storage.Record, invite string) (storage.Record, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return storage.Record{}, false, err
	}
	if !validToken(rec.Handle) {
		return storage.Record{}, false, fmt.Errorf("nats: handle %q cannot be a subject token", rec.Handle)
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return storage.Record{}, false, err
	}
	lastErr := errors.New("nats: a competing registration did not settle")
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, time.Duration(min(attempt, 10))*20*time.Millisecond); err != nil {
				return storage.Record{}, false, lastErr
			}
		}
		claims := []*natsio.Msg{
			s.claim(handleKey(rec.Handle), raw),
			s.claim(primaryKey(rec.Primary), []byte(rec.Handle)),
		}
		if invite != "" {
			claims = append(claims, s.claim(inviteKey(invite), []byte(rec.Handle)))
		}
		_, err := s.publishBatch(ctx, claims)
		if err == nil {
			s.known(rec.Handle)
			return rec, true, nil
		}
		if !isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
			if temporary(err) && !errors.Is(err, ErrUnavailable) {
				lastErr = err
				continue // the commit may have landed: the next round sees it
			}
			return storage.Record{}, false, err
		}
		// A key exists already: find out which, from the leader.
		if data, err := s.getKey(ctx, handleKey(rec.Handle), true); err == nil {
			var stored storage.Record
			if err := json.Unmarshal(data, &stored); err != nil {
				return storage.Record{}, false, fmt.Errorf("nats: decode record %q: %w", rec.Handle, err)
			}
			s.known(rec.Handle)
			if stored.Primary == rec.Primary {
				return stored, false, nil // an idempotent retry
			}
			return storage.Record{}, false, storage.ErrHandleTaken
		} else if !errors.Is(err, storage.ErrNotFound) {
			return storage.Record{}, false, err
		}
		if _, err := s.getKey(ctx, primaryKey(rec.Primary), true); err == nil {
			return storage.Record{}, false, storage.ErrPrimaryTaken
		} else if !errors.Is(err, storage.ErrNotFound) {
			return storage.Record{}, false, err
		}
		if invite != "" {
			if _, err := s.getKey(ctx, inviteKey(invite), true); err == nil {
				return storage.Record{}, false, storage.ErrInviteUsed
			} else if !errors.Is(err, storage.ErrNotFound) {
				return storage.Record{}, false, err
			}
		}
		// The winner of a race is not applied yet; look again.
	}
}

// claim is a KV put that only succeeds if the key was never written.
func (s *Store) claim(key string, value []byte) *natsio.Msg {
	m := natsio.NewMsg(s.regSubj + key)
	m.Data = value
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	return m
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
	subj := s.regSubj + key
	if !leader {
		m, err := retry(ctx, func(ctx context.Context) (*natsio.Msg, error) {
			m, err := s.nc.RequestWithContext(ctx, s.apiPrefix+"DIRECT.GET."+s.regName+"."+subj, nil)
			return m, netErr(err)
		})
		if err != nil {
			return nil, err
		}
		switch status := m.Header.Get("Status"); {
		case status == "" && !kvDeleted(m.Header.Get("KV-Operation")):
			return m.Data, nil
		case status != "" && status != "404":
			return nil, fmt.Errorf("nats: direct get %s: %s %s", key, status, m.Header.Get("Description"))
		}
	}
	sm, err := s.leaderGet(ctx, s.regName, map[string]any{"last_by_subj": subj})
	if err != nil {
		return nil, err
	}
	if len(sm.Header) > 0 {
		if h, err := decodeHeaders(sm.Header); err == nil && kvDeleted(h.Get("KV-Operation")) {
			return nil, storage.ErrNotFound
		}
	}
	return sm.Data, nil
}

func kvDeleted(op string) bool { return op == "DEL" || op == "PURGE" }

func decodeHeaders(raw []byte) (natsio.Header, error) { return natsio.DecodeHeadersMsg(raw) }

// known remembers a registered handle: registrations are never undone, so
// appends and reads to it skip the registry from now on.
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

// Lookup returns a handle's record.
func (s *Store) Lookup(ctx context.Context, handle string) (storage.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return storage.Record{}, err
	}
	return s.lookup(ctx, handle)
}

func (s *Store) lookup(ctx context.Context, handle string) (storage.Record, error) {
	if !validToken(handle) {
		return storage.Record{}, storage.ErrNotFound
	}
	data, err := s.getKey(ctx, handleKey(handle), false)
	if err != nil {
		return storage.Record{}, err
	}
	var rec storage.Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return storage.Record{}, fmt.Errorf("nats: decode record %q: %w", handle, err)
	}
	s.known(handle)
	return rec, nil
}

// LookupPrimary returns the record bound to a primary.
func (s *Store) LookupPrimary(ctx context.Context, primary string) (storage.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return storage.Record{}, err
	}
	handle, err := s.getKey(ctx, primaryKey(primary), false)
	if err != nil {
		return storage.Record{}, err
	}
	return s.lookup(ctx, string(handle))
}
