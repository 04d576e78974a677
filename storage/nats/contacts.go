package nats

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kezchat/kez/storage"
)

// Contact lists (SPEC §2.9) are one key per handle in the <prefix>_contacts
// bucket, changed by compare-and-set on the key's revision (expected last
// subject sequence), so concurrent changes through several servers are
// never lost.
//
// A stored message cannot be changed, so what an acceptance does to the
// requests already stored is kept in the list: every acceptance of a
// sender bumps its epoch, and a request is stored on
// <prefix>.inbox.<handle>.r.<sender token>.<epoch>. A request is a
// message (Request false, counted against MaxInbox, not against the
// request limits) once its sender is accepted or its epoch is older than
// the sender's: stored while not accepted and accepted since, which an
// Unaccept does not undo. Block deletes the requests of the current epoch
// only. converted is the highest seq of a request an acceptance may have
// made a message: while the inbox may hold one (until an Ack reaches it),
// Append counts MaxInbox itself instead of relying on the stream's
// per-subject limit, which counts only <prefix>.inbox.<handle>.m.
//
// Every server caches the lists of the inboxes it serves and keeps them
// fresh with a watch (an ordered consumer on the bucket's stream, from the
// moment the store is set up), so a send from a contact costs no lookup.
// A list is loaded from the stream leader on first use, and the cache
// keeps whichever of that answer and the watch's news is newer. Changes
// made through this server update its cache before SetContact returns;
// changes made through another server arrive with the watch, a few
// milliseconds later (see Append for what that can and cannot affect).
// The cache is dropped when the connection is lost.

// contactsCacheMax bounds how many inboxes' lists a server keeps.
const contactsCacheMax = 1 << 16

// contactList is one inbox's lists at one revision (0: never written).
type contactList struct {
	rev       uint64
	accepted  map[string]bool
	blocked   map[string]bool
	epochs    map[string]uint64
	converted uint64
}

type contactsDoc struct {
	Accepted  []string          `json:"accepted,omitempty"`
	Blocked   []string          `json:"blocked,omitempty"`
	Epochs    map[string]uint64 `json:"epochs,omitempty"`
	Converted uint64            `json:"converted,omitempty"`
}

func parseContacts(rev uint64, data []byte) (*contactList, error) {
	c := &contactList{rev: rev, accepted: map[string]bool{}, blocked: map[string]bool{}, epochs: map[string]uint64{}}
	if len(data) == 0 {
		return c, nil
	}
	var doc contactsDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("nats: decoding a contact list: %w", err)
	}
	for _, p := range doc.Accepted {
		c.accepted[p] = true
	}
	for _, p := range doc.Blocked {
		c.blocked[p] = true
	}
	maps.Copy(c.epochs, doc.Epochs)
	c.converted = doc.Converted
	return c, nil
}

func (c *contactList) doc() contactsDoc {
	return contactsDoc{Accepted: slices.Sorted(maps.Keys(c.accepted)), Blocked: slices.Sorted(maps.Keys(c.blocked)),
		Epochs: c.epochs, Converted: c.converted}
}

func (c *contactList) clone() *contactList {
	return &contactList{rev: c.rev, accepted: maps.Clone(c.accepted), blocked: maps.Clone(c.blocked),
		epochs: maps.Clone(c.epochs), converted: c.converted}
}

// isRequest reports whether a message from primary stored in epoch is a
// request now.
func (c *contactList) isRequest(primary string, epoch uint64) bool {
	return !c.accepted[primary] && epoch >= c.epochs[primary]
}

// hidden reports whether such a request was (or is to be) deleted by a block.
func (c *contactList) hidden(primary string, epoch uint64) bool {
	return c.blocked[primary] && epoch >= c.epochs[primary]
}

// accept makes primary a contact; lastRequest is the seq of its last
// stored request (0: none), which becomes a message.
func (c *contactList) accept(primary string, lastRequest uint64) {
	c.accepted[primary] = true
	delete(c.blocked, primary)
	c.epochs[primary]++
	c.converted = max(c.converted, lastRequest)
}

// apply makes a change and reports whether it changed anything.
func (c *contactList) apply(primary string, state storage.ContactState, lastRequest uint64) bool {
	was := [2]bool{c.accepted[primary], c.blocked[primary]}
	switch state {
	case storage.Accept:
		if c.accepted[primary] {
			delete(c.blocked, primary)
		} else {
			c.accept(primary, lastRequest)
		}
	case storage.Unaccept:
		delete(c.accepted, primary)
	case storage.Block:
		c.blocked[primary] = true
		delete(c.accepted, primary)
	case storage.Unblock:
		delete(c.blocked, primary)
	}
	return was != [2]bool{c.accepted[primary], c.blocked[primary]}
}

// cachedContacts is a cache entry: list is nil until the first load is
// done; the watch keeps whichever is newer.
type cachedContacts struct {
	list *contactList
}

// senderToken is the subject token of a sender's requests: alg_rest for
// primaries such as ed25519:<hex> (readable in `nats stream subjects`),
// else "_" and the primary in base64url. Distinct primaries get distinct
// tokens: alg has no '_' in the first form, which never starts with '_'.
func senderToken(primary string) string {
	if alg, rest, ok := strings.Cut(primary, ":"); ok && alg != "" && rest != "" && len(primary) <= 200 &&
		strings.IndexByte(alg, '_') < 0 && validName(alg) && validName(rest) {
		return alg + "_" + rest
	}
	return "_" + base64.RawURLEncoding.EncodeToString([]byte(primary))
}

// validName: letters, digits, '_' and '-', which any subject token may hold.
func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// startWatch starts the ordered consumer that applies every later change
// of a contact list to the cache.
func (s *Store) startWatch(ctx context.Context) error {
	stream, err := s.js.Stream(ctx, s.contactsName)
	if err != nil {
		return fmt.Errorf("nats: reading stream %s: %w", s.contactsName, netErr(err))
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.contactsSubj + ">"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    stream.CachedInfo().State.LastSeq + 1,
	})
	if err != nil {
		return fmt.Errorf("nats: creating the contacts watch: %w", netErr(err))
	}
	cc, err := cons.Consume(s.contactChanged, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		s.log.Debug("contacts watch", "error", err)
	}))
	if err != nil {
		return fmt.Errorf("nats: starting the contacts watch: %w", netErr(err))
	}
	s.watch = cc
	return nil
}

// contactChanged applies a change delivered by the watch to a cached list.
func (s *Store) contactChanged(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	handle, ok := strings.CutPrefix(msg.Subject(), s.contactsSubj)
	if !ok {
		return
	}
	data := msg.Data()
	if kvDeleted(msg.Headers().Get("KV-Operation")) {
		data = nil
	}
	c, err := parseContacts(meta.Sequence.Stream, data)
	if err != nil {
		s.log.Warn("contacts watch: undecodable list", "handle", handle, "error", err)
		return
	}
	s.cmu.Lock()
	if e := s.contacts[handle]; e != nil && (e.list == nil || e.list.rev < c.rev) {
		e.list = c
	}
	s.cmu.Unlock()
}

// forgetContacts drops the cache (the connection was lost).
func (s *Store) forgetContacts() {
	s.cmu.Lock()
	clear(s.contacts)
	s.cmu.Unlock()
}

// remember puts a list read from the leader (or just written) in the
// cache, unless the cache has a newer one, and returns the newest.
func (s *Store) remember(handle string, c *contactList) *contactList {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	e := s.contacts[handle]
	if e == nil {
		return c // not cached (evicted, or the cache was dropped meanwhile)
	}
	if e.list == nil || e.list.rev < c.rev {
		e.list = c
	}
	return e.list
}

// contactsOf returns handle's lists from the cache, loading them from the
// leader on first use.
func (s *Store) contactsOf(ctx context.Context, handle string) (*contactList, error) {
	s.cmu.Lock()
	if e := s.contacts[handle]; e != nil && e.list != nil {
		c := e.list
		s.cmu.Unlock()
		return c, nil
	}
	if s.contacts[handle] == nil {
		if len(s.contacts) >= contactsCacheMax {
			for h := range s.contacts {
				delete(s.contacts, h)
				break
			}
		}
		// From now on the watch records changes of this list.
		s.contacts[handle] = &cachedContacts{}
	}
	s.cmu.Unlock()
	return s.loadContacts(ctx, handle)
}

// cachedContactsOf returns handle's lists if cached, else nil.
func (s *Store) cachedContactsOf(handle string) *contactList {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if e := s.contacts[handle]; e != nil {
		return e.list
	}
	return nil
}

// loadContacts reads handle's lists from the leader (consistent with every
// acknowledged change) and refreshes the cache with them.
func (s *Store) loadContacts(ctx context.Context, handle string) (*contactList, error) {
	sm, err := s.leaderGet(ctx, s.contactsName, map[string]any{"last_by_subj": s.contactsSubj + handle})
	var c *contactList
	switch {
	case err == nil:
		data := sm.Data
		if len(sm.Header) > 0 {
			if h, err := decodeHeaders(sm.Header); err == nil && kvDeleted(h.Get("KV-Operation")) {
				data = nil
			}
		}
		if c, err = parseContacts(sm.Seq, data); err != nil {
			return nil, err
		}
	case isNotFound(err):
		c, _ = parseContacts(0, nil)
	default:
		return nil, err
	}
	return s.remember(handle, c), nil
}

// updateContacts changes handle's lists with change (which reports whether
// it changed anything) by compare-and-set, re-reading and retrying when
// another change came first.
func (s *Store) updateContacts(ctx context.Context, handle string, change func(*contactList) bool) (*contactList, error) {
	for attempt := 0; ; attempt++ {
		cur, err := s.loadContacts(ctx, handle)
		if err != nil {
			return nil, err
		}
		next := cur.clone()
		if !change(next) {
			return cur, nil
		}
		data, err := json.Marshal(next.doc())
		if err != nil {
			return nil, err
		}
		msg := natsio.NewMsg(s.contactsSubj + handle)
		msg.Data = data
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(cur.rev, 10))
		// A retry of a change that was stored fails the check; the next
		// round reads it back and finds nothing left to change.
		ack, err := s.publish(ctx, msg)
		if isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
			if err := sleep(ctx, backoff(attempt)); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		next.rev = ack.Seq
		return s.remember(handle, next), nil
	}
}

// SetContact changes how handle's inbox treats primary. Blocking also
// deletes the requests primary has stored there (after the list change,
// so that a request stored meanwhile is caught by Append's check after
// storing, see Append).
func (s *Store) SetContact(ctx context.Context, handle, primary string, state storage.ContactState) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return err
	}
	if state < storage.Accept || state > storage.Unblock {
		return fmt.Errorf("nats: unknown contact state %d", state)
	}
	if err := s.exists(ctx, handle); err != nil {
		return err
	}
	var last uint64
	if state == storage.Accept {
		var err error
		if last, err = s.lastRequest(ctx, handle, primary); err != nil {
			return err
		}
	}
	c, err := s.updateContacts(ctx, handle, func(c *contactList) bool { return c.apply(primary, state, last) })
	if err != nil {
		return err
	}
	if state == storage.Block {
		_, err := s.purge(ctx, s.requestSubj(handle, primary, c.epochs[primary]), 0)
		return err
	}
	return nil
}

// lastRequest returns the seq of primary's last request in handle's inbox
// (of any epoch), 0 if none.
func (s *Store) lastRequest(ctx context.Context, handle, primary string) (uint64, error) {
	sm, err := s.leaderGet(ctx, s.inboxName, map[string]any{"last_by_subj": s.senderRequestsFilter(handle, primary)})
	switch {
	case err == nil:
		return sm.Seq, nil
	case isNotFound(err):
		return 0, nil
	}
	return 0, err
}

// Contacts returns handle's lists as the leader has them.
func (s *Store) Contacts(ctx context.Context, handle string) (storage.Contacts, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return storage.Contacts{}, err
	}
	if err := s.exists(ctx, handle); err != nil {
		return storage.Contacts{}, err
	}
	c, err := s.loadContacts(ctx, handle)
	if err != nil {
		return storage.Contacts{}, err
	}
	doc := c.doc()
	return storage.Contacts{Accepted: nonNil(doc.Accepted), Blocked: nonNil(doc.Blocked)}, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// acceptBySending makes primary a contact of handle's inbox (SPEC §2.9:
// sending to someone accepts them), unless handle blocked it. Free when
// the cached list already has it.
func (s *Store) acceptBySending(ctx context.Context, handle, primary string) error {
	if primary == "" {
		return nil
	}
	if err := s.exists(ctx, handle); err != nil {
		if isNotFound(err) {
			return nil // not a local handle
		}
		return err
	}
	c, err := s.contactsOf(ctx, handle)
	if err != nil {
		return err
	}
	if c.accepted[primary] || c.blocked[primary] {
		return nil
	}
	last, err := s.lastRequest(ctx, handle, primary)
	if err != nil {
		return err
	}
	_, err = s.updateContacts(ctx, handle, func(c *contactList) bool {
		if c.accepted[primary] || c.blocked[primary] {
			return false
		}
		c.accept(primary, last)
		return true
	})
	return err
}

// backoff is the pause before another round of a compare-and-set.
func backoff(attempt int) time.Duration {
	return time.Duration(min(attempt+1, 10)) * 5 * time.Millisecond
}
