package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// dedupeWindow is how long the streams remember a message id: a publish
// retried within it (after a lost answer) is stored once.
const dedupeWindow = 2 * time.Minute

// apiResponse is the error part of every JetStream API answer.
type apiResponse struct {
	Error *jetstream.APIError `json:"error,omitempty"`
}

// api sends a JetStream API request ($JS.API.<subject>) and decodes the
// answer into resp. Every request sent this way is idempotent, so it is
// retried while the cluster elects a leader (see retry).
func (s *Store) api(ctx context.Context, subject string, req, resp any) error {
	var body []byte
	if req != nil {
		var err error
		if body, err = json.Marshal(req); err != nil {
			return err
		}
	}
	m, err := retry(ctx, func(ctx context.Context) (*natsio.Msg, error) {
		m, err := s.nc.RequestWithContext(ctx, s.apiPrefix+subject, body)
		if err != nil {
			return nil, netErr(err)
		}
		var status apiResponse
		if err := json.Unmarshal(m.Data, &status); err != nil {
			return nil, fmt.Errorf("nats: decoding the answer to %s: %w", subject, err)
		}
		if status.Error != nil {
			return nil, status.Error
		}
		return m, nil
	})
	if err != nil {
		return err
	}
	if err := json.Unmarshal(m.Data, resp); err != nil {
		return fmt.Errorf("nats: decoding the answer to %s: %w", subject, err)
	}
	return nil
}

// maxAttempt bounds one attempt of a request: after a leader is lost, a
// request may go unanswered, and it is better tried again (on the new
// leader) than waited for until the call's own timeout.
const maxAttempt = time.Second

// retry runs an idempotent request until it succeeds, fails for good, or
// ctx ends: no leader yet, a lost answer, too many requests are worth
// another try a little later. A connection that is down fails at once.
// Each attempt gets at most maxAttempt.
func retry[T any](ctx context.Context, do func(context.Context) (T, error)) (T, error) {
	return retryEach(ctx, maxAttempt, do)
}

// retryEach is retry with another bound per attempt.
func retryEach[T any](ctx context.Context, each time.Duration, do func(context.Context) (T, error)) (T, error) {
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, each)
		v, err := do(actx)
		cancel()
		if err == nil || !temporary(err) || errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
			return v, err
		}
		if sleep(ctx, time.Duration(min(attempt, 10))*25*time.Millisecond) != nil {
			return v, err
		}
	}
}

// netErr names a failed request in terms an operator understands.
func netErr(err error) error {
	switch {
	case errors.Is(err, natsio.ErrNoResponders):
		return fmt.Errorf("nats: no JetStream server answered (stream without leader, or JetStream disabled): %w", err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, natsio.ErrTimeout):
		return fmt.Errorf("nats: request timed out: %w", err)
	case errors.Is(err, natsio.ErrConnectionClosed), errors.Is(err, natsio.ErrConnectionReconnecting),
		errors.Is(err, natsio.ErrReconnectBufExceeded), errors.Is(err, natsio.ErrDisconnected):
		return fmt.Errorf("%w (%v)", ErrUnavailable, err)
	}
	return err
}

// temporary reports whether a failed write may succeed if tried again
// soon: no leader yet, a timeout, a lost connection.
func temporary(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10008, // JetStream system temporarily unavailable (no leader yet)
			10163, // expected last sequence per subject temporarily unavailable
			10167, // too many requests
			10210, // atomic publish too many inflight
			10004: // incomplete results
			return true
		}
		return false
	}
	return errors.Is(err, natsio.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, natsio.ErrTimeout) || errors.Is(err, ErrUnavailable) ||
		errors.Is(err, jetstream.ErrNoStreamResponse)
}

// inboxConfig is the inbox stream as this configuration wants it: the
// inboxes under <prefix>.inbox.> and the idempotency records of their
// messages under <prefix>.ids.> (see the package comment).
func (s *Store) inboxConfig() jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:              s.inboxName,
		Description:       "KEZ chat inboxes: <prefix>.inbox.<handle>.m (messages), .r.<sender> (message requests); <prefix>.ids.<handle>.<key>.* (idempotency records); seq is the stream sequence",
		Subjects:          []string{s.inboxSubj + ">", s.idsSubj + ">"},
		Storage:           jetstream.FileStorage,
		Replicas:          s.opts.Replicas,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		MaxConsumers:      -1,
		MaxAge:            s.opts.Retention,
		MaxMsgsPerSubject: -1,
		Duplicates:        dedupeWindow,
		AllowDirect:       true,
		DenyDelete:        true,
		// Created for v2: no message is stored under a v1 subject.
		Metadata: map[string]string{metaV1LastSeq: "0"},
	}
	if s.opts.MaxInbox > 0 {
		cfg.MaxMsgsPerSubject = int64(s.opts.MaxInbox)
		cfg.DiscardNewPerSubject = true
	}
	return cfg
}

// metaV1LastSeq is the inbox stream's metadata key for the last sequence
// stored before the stream was moved from v1's subjects (<prefix>.inbox.*,
// one subject per handle) to v2's: messages under a v1 subject all have a
// sequence at most this, and none is added after it. "0" for a stream
// created for v2.
const metaV1LastSeq = "kez_v1_last_seq"

// kvConfig is the stream of a KV bucket as nats.go creates them (history
// 1), so `nats kv` tools work on it. ttl allows per-key TTLs (Nats-TTL).
func (s *Store) kvConfig(bucket, desc string, ttl bool) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              "KV_" + bucket,
		Description:       desc,
		Subjects:          []string{"$KV." + bucket + ".>"},
		Storage:           jetstream.FileStorage,
		Replicas:          s.opts.Replicas,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		MaxMsgSize:        -1,
		MaxConsumers:      -1,
		MaxMsgsPerSubject: 1,
		Duplicates:        dedupeWindow,
		AllowRollup:       true,
		DenyDelete:        true,
		AllowDirect:       true,
		AllowMsgTTL:       ttl,
	}
}

// registryConfig is the registry bucket's stream: a KV bucket (history 1,
// as nats.go creates them, so `nats kv` tools work on it) that also
// accepts atomic batches.
func (s *Store) registryConfig() jetstream.StreamConfig {
	c := s.kvConfig(s.bucket, "KEZ chat registry (KV bucket "+s.bucket+"): h.<handle>, p.<primary>, i.<invite>; the binding log: leaf.<n>, log.head, log.key, log.legacy, job.<n>", false)
	c.AllowAtomicPublish = true
	return c
}

// ensureStreams creates the streams and buckets, or updates them to this
// configuration without ever lowering a limit another server (or an
// operator) has raised: a lower limit asked for is logged and not applied.
func (s *Store) ensureStreams(ctx context.Context) error {
	if _, err := s.ensure(ctx, s.registryConfig()); err != nil {
		return err
	}
	if _, err := s.ensure(ctx, s.kvConfig(s.contactsBucket, "KEZ chat contact lists: <handle> → {accepted, blocked}", false)); err != nil {
		return err
	}
	if _, err := s.ensure(ctx, s.kvConfig(s.usedBucket, "KEZ chat single-use record of signed requests: <sha256 hex>, each with a TTL", true)); err != nil {
		return err
	}
	info, err := s.ensure(ctx, s.inboxConfig())
	if err != nil {
		return err
	}
	v1Last, err := strconv.ParseUint(info.Config.Metadata[metaV1LastSeq], 10, 64)
	if err != nil {
		// Not set by us: assume anything may be under a v1 subject.
		v1Last = info.State.LastSeq
	}
	s.mu.Lock()
	s.streamMI = info.Config.MaxMsgsPerSubject
	s.v1Last = v1Last
	s.mu.Unlock()
	return nil
}

// unlimited treats 0 and negative limits as "none".
func larger(have, want int64) (int64, bool) {
	switch {
	case have <= 0:
		return have, want > 0 // unlimited already; a limit would lower it
	case want <= 0:
		return -1, false
	case want < have:
		return have, true
	}
	return want, false
}

func (s *Store) ensure(ctx context.Context, want jetstream.StreamConfig) (*jetstream.StreamInfo, error) {
	stream, err := s.js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		stream, err = s.js.CreateStream(ctx, want)
		if err == nil {
			s.log.Info("created NATS stream", "stream", want.Name, "replicas", want.Replicas)
			return stream.CachedInfo(), nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("nats: creating stream %s: %w", want.Name, netErr(err))
		}
		stream, err = s.js.Stream(ctx, want.Name) // another server created it first
	}
	if err != nil {
		return nil, fmt.Errorf("nats: reading stream %s: %w", want.Name, netErr(err))
	}
	info := stream.CachedInfo()
	have := info.Config
	next := have
	if want.Name == s.inboxName && slices.Equal(have.Subjects, []string{s.inboxSubj + "*"}) {
		// A v1 inbox stream: its messages stay where they are (v1
		// subjects, read as before), new ones go to v2 subjects.
		next.Subjects = want.Subjects
		next.Metadata = maps.Clone(have.Metadata)
		if next.Metadata == nil {
			next.Metadata = map[string]string{}
		}
		next.Metadata[metaV1LastSeq] = strconv.FormatUint(info.State.LastSeq, 10)
		s.log.Info("moving the NATS inbox stream to v2 subjects; v1 messages stay readable", "stream", want.Name, "v1_last_seq", info.State.LastSeq)
	} else if !slices.Equal(have.Subjects, want.Subjects) {
		return nil, fmt.Errorf("nats: stream %s exists with subjects %v, not %v: is another application using it? choose another prefix (storage nats { stream <prefix> })",
			want.Name, have.Subjects, want.Subjects)
	}
	var kept []string
	if want.Replicas > have.Replicas {
		next.Replicas = want.Replicas
	} else if want.Replicas < have.Replicas {
		kept = append(kept, fmt.Sprintf("replicas %d (asked %d)", have.Replicas, want.Replicas))
	}
	age, lower := larger(int64(have.MaxAge), int64(want.MaxAge))
	if age < 0 {
		age = 0
	}
	next.MaxAge = time.Duration(age)
	if lower {
		kept = append(kept, fmt.Sprintf("max_age %s (asked %s)", ageString(have.MaxAge), ageString(want.MaxAge)))
	}
	if want.Name == s.inboxName {
		per, lower := larger(have.MaxMsgsPerSubject, want.MaxMsgsPerSubject)
		next.MaxMsgsPerSubject = per
		if lower {
			kept = append(kept, fmt.Sprintf("max_msgs_per_subject %s (asked %d)", limitString(have.MaxMsgsPerSubject), want.MaxMsgsPerSubject))
		}
		next.Discard = jetstream.DiscardNew
		next.DiscardNewPerSubject = per > 0
		if next.Duplicates == 0 {
			next.Duplicates = dedupeWindow
		}
	}
	if next.MaxAge > 0 && next.Duplicates > next.MaxAge {
		next.Duplicates = next.MaxAge
	}
	next.AllowDirect = true
	next.AllowAtomicPublish = next.AllowAtomicPublish || want.AllowAtomicPublish
	next.AllowMsgTTL = next.AllowMsgTTL || want.AllowMsgTTL
	if len(kept) > 0 {
		s.log.Warn("NATS stream keeps limits higher than this configuration asks for; they are never lowered automatically (lower them with `nats stream edit` if you mean it)",
			"stream", want.Name, "kept", strings.Join(kept, ", "))
	}
	if sameConfig(have, next) {
		return info, nil
	}
	stream, err = s.js.UpdateStream(ctx, next)
	if err != nil {
		return nil, fmt.Errorf("nats: updating stream %s: %w", want.Name, netErr(err))
	}
	s.log.Info("updated NATS stream", "stream", want.Name, "replicas", next.Replicas,
		"max_age", ageString(next.MaxAge), "max_msgs_per_subject", limitString(next.MaxMsgsPerSubject))
	return stream.CachedInfo(), nil
}

func sameConfig(a, b jetstream.StreamConfig) bool {
	return slices.Equal(a.Subjects, b.Subjects) && a.Metadata[metaV1LastSeq] == b.Metadata[metaV1LastSeq] && a.AllowMsgTTL == b.AllowMsgTTL &&
		a.Replicas == b.Replicas && a.MaxAge == b.MaxAge && a.MaxMsgsPerSubject == b.MaxMsgsPerSubject &&
		a.Discard == b.Discard && a.DiscardNewPerSubject == b.DiscardNewPerSubject && a.Duplicates == b.Duplicates &&
		a.AllowDirect == b.AllowDirect && a.AllowAtomicPublish == b.AllowAtomicPublish
}

func ageString(d time.Duration) string {
	if d <= 0 {
		return "unlimited"
	}
	return d.String()
}

func limitString(n int64) string {
	if n <= 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}
