package nats

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	natsio "github.com/nats-io/nats.go"
)

// What a rotation or a deletion changes beyond the registry cannot be in
// its atomic batch: contact lists are another bucket (every inbox's, for a
// rotation), inboxes another stream. So the batch also writes a job,
// job.<leaf index> in the registry, and the work follows it:
//
//   - rotate: every contact list that accepts or blocks the old primary
//     moves that entry to the new one (SPEC §2.9), by compare-and-set, so
//     running it twice changes nothing the second time. Skipped if the
//     old primary is bound again (registered since by someone else).
//   - delete: the handle's inbox (messages, requests, v1 messages,
//     idempotency records) is purged and its contact list deleted.
//     Skipped if the handle's record is no longer the tombstone of that
//     deletion (registered again after its cooldown).
//
// The server that made the change runs its job at once, before Rotate or
// Delete returns; done, the job is purged. A job left by a server that
// failed (crash, lost connection) is run by the next server that starts,
// or within jobsEvery by any running server. Jobs run in log order.
const jobsEvery = time.Minute

type jobDoc struct {
	Op     string `json:"op"` // "rotate" or "delete"
	Handle string `json:"handle"`
	Old    string `json:"old,omitempty"`
	New    string `json:"new,omitempty"`
}

func jobKey(n int64) string { return jobPrefix + strconv.FormatInt(n, 10) }

// jobMsg is the job of leaf n, created in its batch.
func (s *Store) jobMsg(n int64, j jobDoc) (*natsio.Msg, error) {
	data, err := json.Marshal(j)
	if err != nil {
		return nil, err
	}
	return s.claim(jobKey(n), data), nil
}

// runJobs runs every pending job, in log order.
func (s *Store) runJobs(ctx context.Context) error {
	s.jobMu.Lock()
	defer s.jobMu.Unlock()
	type pending struct {
		n   int64
		job jobDoc
	}
	var todo []pending
	for since := uint64(0); ; {
		body := fmt.Appendf(nil, `{"seq":%d,"next_by_subj":%q,"batch":256}`, since+1, s.regSubj+jobPrefix+">")
		p, err := retryEach(ctx, s.timeout, func(ctx context.Context) (page, error) {
			msgs, more, err := s.directBatch(ctx, s.regName, body)
			return page{msgs, more}, err
		})
		if err != nil {
			return err
		}
		for _, m := range p.msgs {
			since = m.seq
			n, err := strconv.ParseInt(strings.TrimPrefix(m.subject, s.regSubj+jobPrefix), 10, 64)
			if err != nil {
				continue
			}
			var j jobDoc
			if err := json.Unmarshal(m.data, &j); err != nil {
				s.log.Warn("binding log: undecodable job", "index", n, "error", err)
				continue
			}
			todo = append(todo, pending{n, j})
		}
		if !p.more || len(p.msgs) == 0 {
			break
		}
	}
	slices.SortFunc(todo, func(a, b pending) int { return int(max(-1, min(1, a.n-b.n))) })
	for _, p := range todo {
		if err := s.runJobLocked(ctx, p.n, p.job); err != nil {
			return err
		}
	}
	return nil
}

// runJob runs the job of leaf n now (Rotate, Delete).
func (s *Store) runJob(ctx context.Context, n int64, j jobDoc) error {
	s.jobMu.Lock()
	defer s.jobMu.Unlock()
	return s.runJobLocked(ctx, n, j)
}

func (s *Store) runJobLocked(ctx context.Context, n int64, j jobDoc) error {
	var err error
	switch j.Op {
	case "rotate":
		err = s.moveContacts(ctx, j.Old, j.New)
	case "delete":
		err = s.purgeHandle(ctx, n, j.Handle)
	default:
		s.log.Warn("binding log: unknown job", "index", n, "op", j.Op)
	}
	if err != nil {
		return err
	}
	_, err = s.purgeStream(ctx, s.regName, s.regSubj+jobKey(n))
	return err
}

// moveContacts moves every acceptance or block of old to new.
func (s *Store) moveContacts(ctx context.Context, old, new string) error {
	if p, err := s.leaderKey(ctx, primaryKey(old)); err != nil {
		return err
	} else if p.live() {
		return nil // old is someone's key again: its lists are theirs now
	}
	for since := uint64(0); ; {
		body := fmt.Appendf(nil, `{"seq":%d,"next_by_subj":%q,"batch":256}`, since+1, s.contactsSubj+">")
		p, err := retryEach(ctx, s.timeout, func(ctx context.Context) (page, error) {
			msgs, more, err := s.directBatch(ctx, s.contactsName, body)
			return page{msgs, more}, err
		})
		if err != nil {
			return err
		}
		for _, m := range p.msgs {
			since = m.seq
			if kvDeleted(m.hdr.Get(hdrKVOp)) {
				continue
			}
			c, err := parseContacts(m.seq, m.data)
			if err != nil || !c.accepted[old] && !c.blocked[old] {
				continue
			}
			handle := strings.TrimPrefix(m.subject, s.contactsSubj)
			if err := s.moveContact(ctx, handle, old, new); err != nil {
				return err
			}
		}
		if !p.more || len(p.msgs) == 0 {
			return nil
		}
	}
}

// moveContact moves handle's acceptance or block of old to new: a block
// wins over an acceptance new may already have.
func (s *Store) moveContact(ctx context.Context, handle, old, new string) error {
	last, err := s.lastRequest(ctx, handle, new)
	if err != nil {
		return err
	}
	c, err := s.updateContacts(ctx, handle, func(c *contactList) bool {
		accepted, blocked := c.accepted[old], c.blocked[old]
		if !accepted && !blocked {
			return false
		}
		delete(c.accepted, old)
		delete(c.blocked, old)
		switch {
		case blocked:
			c.blocked[new] = true
			delete(c.accepted, new)
		case !c.blocked[new] && !c.accepted[new]:
			c.accept(new, last)
		}
		return true
	})
	if err != nil {
		return err
	}
	if c.blocked[new] {
		_, err = s.purge(ctx, s.requestSubj(handle, new, c.epochs[new]), 0)
	}
	return err
}

// purgeHandle deletes the inbox and the contact list of handle, deleted
// by leaf n, unless it was registered again since.
func (s *Store) purgeHandle(ctx context.Context, n int64, handle string) error {
	k, err := s.leaderKey(ctx, handleKey(handle))
	if err != nil {
		return err
	}
	if !k.deleted || k.hdr.Get(hdrLogIndex) != strconv.FormatInt(n, 10) {
		return nil
	}
	return s.purgeInbox(ctx, handle)
}

// purgeInbox deletes everything stored for handle's inbox.
func (s *Store) purgeInbox(ctx context.Context, handle string) error {
	for _, filter := range []string{s.inboxFilter(handle), s.v1Subj(handle), s.idsSubj + handle + ".>"} {
		if _, err := s.purge(ctx, filter, 0); err != nil {
			return err
		}
	}
	// A delete marker (not a purge) so that every server's watch drops
	// its cached list.
	m := natsio.NewMsg(s.contactsSubj + handle)
	m.Header.Set(hdrKVOp, "DEL")
	if _, err := s.publish(ctx, m); err != nil {
		return err
	}
	ack, err := s.publish(ctx, s.tombstone(pushListKey(handle)))
	if err != nil {
		return err
	}
	s.pushWritten(handle, ack.Seq)
	s.forgetInbox(handle)
	return nil
}

// forgetInbox drops what this server knows of handle's inbox.
func (s *Store) forgetInbox(handle string) {
	s.mu.Lock()
	delete(s.handles, handle)
	delete(s.v1, handle)
	s.mu.Unlock()
	s.cmu.Lock()
	delete(s.contacts, handle)
	s.cmu.Unlock()
}

// purgeStream removes every message on filter from stream.
func (s *Store) purgeStream(ctx context.Context, stream, filter string) (int, error) {
	var resp struct {
		apiResponse
		Purged uint64 `json:"purged"`
	}
	if err := s.api(ctx, "STREAM.PURGE."+stream, map[string]any{"filter": filter}, &resp); err != nil {
		return 0, err
	}
	return int(resp.Purged), nil
}
