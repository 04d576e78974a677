package nats

import (
	"context"
	"encoding/hex"
	"errors"
	"math"
	"strconv"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/kezchat/kez/storage"
)

// Once records key in the <prefix>_used bucket, shared by every server on
// the cluster: a key per signed request (hex), created only if absent
// (expected last subject sequence 0, so exactly one of concurrent uses is
// fresh), with a per-message TTL that ends at until (rounded up to whole
// seconds): the bucket holds only what can still be replayed, and a
// record whose time has passed counts as absent even before the server
// has removed it.
func (s *Store) Once(ctx context.Context, key [32]byte, until time.Time) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return false, err
	}
	ttl := max(1, int64(math.Ceil(time.Until(until).Seconds())))
	subj := s.usedSubj + hex.EncodeToString(key[:])
	attempt := nuid.Next()
	var after uint64 // the record to replace: 0 none, else an expired one
	for round := 0; ; round++ {
		msg := natsio.NewMsg(subj)
		msg.Header.Set(hdrTTL, strconv.FormatInt(ttl, 10))
		msg.Header.Set(hdrAttempt, attempt)
		msg.Header.Set(hdrUntil, strconv.FormatInt(until.UnixMilli(), 10))
		msg.Header.Set("Nats-Expected-Last-Subject-Sequence", strconv.FormatUint(after, 10))
		_, err := s.publish(ctx, msg)
		if err == nil {
			return true, nil
		}
		if isCode(err, errCodeWrongLastSeq) {
			sm, err := s.leaderGet(ctx, s.usedName, map[string]any{"last_by_subj": subj})
			if isNotFound(err) {
				after = 0 // expired meanwhile
				continue
			}
			if err != nil {
				return false, err
			}
			r := rawFromStored(sm)
			if r.hdr.Get(hdrAttempt) == attempt {
				return true, nil // this call's, whose answer was lost
			}
			// The server removes a record within about a second of its
			// TTL; until then it is replaced once its time has passed.
			if u, err := strconv.ParseInt(r.hdr.Get(hdrUntil), 10, 64); err == nil && time.Now().UnixMilli() >= u {
				after = r.seq
				continue
			}
			return false, nil
		}
		if !isCode(err, errCodeWrongLastSeqConst) {
			return false, err
		}
		// Another server is recording it right now.
		if err := sleep(ctx, backoff(round)); err != nil {
			return false, err
		}
	}
}

func isNotFound(err error) bool { return errors.Is(err, storage.ErrNotFound) }

// hdrTTL is a message's time to live in seconds (nats-server 2.11+).
const hdrTTL = "Nats-TTL"

// hdrUntil is when a single-use record ends (unix ms).
const hdrUntil = "Kez-Until"
