package nats

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// startFeed starts the ordered consumer that turns every message stored in
// the inbox stream, by any server, into a Notify call. It starts after the
// stream's current last message; an ordered consumer delivers in stream
// order with no gap, recreating itself from the last delivered sequence
// after a reconnect or a lost consumer, so Notify sees each message once,
// and per inbox in ascending seq.
func (s *Store) startFeed(ctx context.Context) error {
	if s.opts.Notify == nil {
		return nil
	}
	stream, err := s.js.Stream(ctx, s.inboxName)
	if err != nil {
		return fmt.Errorf("nats: reading stream %s: %w", s.inboxName, netErr(err))
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.inboxSubj + ">"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    stream.CachedInfo().State.LastSeq + 1,
	})
	if err != nil {
		return fmt.Errorf("nats: creating the inbox feed: %w", netErr(err))
	}
	cc, err := cons.Consume(s.deliver, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		s.log.Debug("inbox feed", "error", err)
	}))
	if err != nil {
		return fmt.Errorf("nats: starting the inbox feed: %w", netErr(err))
	}
	s.feed = cc
	return nil
}

// deliver hands one stored message to Notify, as Read would return it
// (Request from this server's cached lists of the inbox: a fresh request
// is one unless its sender was accepted meanwhile).
func (s *Store) deliver(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		s.log.Warn("inbox feed: message without metadata", "error", err)
		return
	}
	rest, ok := strings.CutPrefix(msg.Subject(), s.inboxSubj)
	if !ok {
		return
	}
	handle, _, _ := strings.Cut(rest, ".")
	seq := meta.Sequence.Stream
	s.mu.Lock()
	if seq > s.seen[handle] {
		s.seen[handle] = seq
	}
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	r := rawMsg{seq: seq, subject: msg.Subject(), hdr: msg.Headers(), data: msg.Data(), time: meta.Timestamp}
	if m, visible := s.message(handle, r, s.cachedContactsOf(handle)); visible {
		s.opts.Notify(handle, m)
	}
}
