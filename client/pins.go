package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"

	"github.com/kezchat/kez/kez"
)

// ContactStatus is how a looked-up contact's key stands against its pin.
type ContactStatus int

const (
	// ContactUnpinned: no key is pinned for the handle (a lookup that did
	// not pin).
	ContactUnpinned ContactStatus = iota
	// ContactNew: the key was pinned by this lookup (first use).
	ContactNew
	// ContactPinned: the key is the pinned one (possibly reached by
	// rotations signed by the pinned key: see Notices).
	ContactPinned
	// ContactChanged: the key changed in a way that was not a rotation
	// signed by the pinned key. Sending is blocked until AcceptKey (or
	// MarkVerified for a contact the user had verified).
	ContactChanged
)

func (s ContactStatus) String() string {
	return [...]string{"unpinned", "new", "pinned", "changed"}[s]
}

// Contact is a looked-up user with the client's trust in their key.
type Contact struct {
	*Record
	Status ContactStatus
	// Pin is the pin after this lookup (zero when unpinned).
	Pin Pin
	// Notices are the contact's rotations followed since they were last
	// shown; Contact hands them out once.
	Notices []Notice
	// Remote: the contact is a user of another server (SPEC §8), verified
	// there under that server's own log key.
	Remote bool
}

// Who names the contact for the user: the bare handle of a user of the
// user's own server, the full address of another server's user.
func (ct *Contact) Who() string {
	if ct.Remote {
		return ct.Address
	}
	return ct.Handle
}

// Verified reports whether the user compared the safety number of the
// contact's current key.
func (ct *Contact) Verified() bool { return ct.Status == ContactPinned && ct.Pin.IsVerified() }

// KeyChange returns the blocking error of a changed contact, nil otherwise.
func (ct *Contact) KeyChange() error {
	if ct.Status != ContactChanged {
		return nil
	}
	how := "the server binds the handle to another key"
	if ct.Pin.Changed != nil {
		how = ct.Pin.Changed.How
	}
	return &KeyChangedError{Handle: ct.Who(), Pinned: ct.Pin.Primary, New: ct.Primary, How: how, Verified: ct.Pin.Verified != ""}
}

// Contact looks up "bob" (or "bob@server"), checks the record in the log
// as the current binding of the handle, and checks its key against the
// pin: the first use pins it (SPEC §6). Use Recipient to send.
func (c *Client) Contact(ctx context.Context, who string) (*Contact, error) {
	return c.lookupContact(ctx, who, true)
}

// lookupContact is Contact (pin) or PeekContact, at who's own server.
func (c *Client) lookupContact(ctx context.Context, who string, pin bool) (*Contact, error) {
	rc, _, err := c.route(ctx, who)
	if err != nil {
		return nil, err
	}
	rec, err := c.Lookup(ctx, who)
	if err != nil {
		return nil, err
	}
	return rc.contactFor(ctx, rec, pin)
}

// PeekContact is Contact without pinning a key seen for the first time
// (for whois): Status is ContactUnpinned then.
func (c *Client) PeekContact(ctx context.Context, who string) (*Contact, error) {
	return c.lookupContact(ctx, who, false)
}

// ContactByPrimary is Contact for the sender of a message: the handle
// bound to primary, with the same checks. A message from a key that is not
// the pinned one comes back ContactChanged: show it as from a new key.
func (c *Client) ContactByPrimary(ctx context.Context, primary string, pin bool) (*Contact, error) {
	rec, err := c.LookupPrimary(ctx, primary)
	if err != nil {
		return nil, err
	}
	return c.contactFor(ctx, rec, pin)
}

// contactFor reads the log up to the record's checkpoint (following the
// rotations of pinned contacts on the way), checks that the record is the
// handle's current binding there, and evaluates the pin.
func (c *Client) contactFor(ctx context.Context, rec *Record, pin bool) (*Contact, error) {
	if err := c.current(ctx, rec); err != nil {
		return nil, err
	}
	ct := &Contact{Record: rec, Remote: c.home != nil}
	err := c.trust.Update(func(st *TrustState) error {
		p := st.Contacts[rec.Handle]
		switch {
		case p == nil && !pin:
			ct.Status = ContactUnpinned
			return ErrNoChange
		case p == nil:
			p = &Pin{Handle: c.display(rec.Handle), Primary: rec.Primary, Index: rec.LogIndex, PinnedAt: c.now().Unix()}
			st.Contacts[rec.Handle] = p
			ct.Status = ContactNew
		case rec.Primary == p.Primary && p.Changed == nil && len(p.Notices) == 0:
			ct.Status, ct.Pin = ContactPinned, *p
			return ErrNoChange
		case rec.Primary == p.Primary:
			p.Changed = nil
			ct.Status = ContactPinned
		default:
			if p.Changed == nil || p.Changed.Primary != rec.Primary {
				// The log read did not explain it; still not a rotation
				// signed by the pinned key.
				p.Changed = &KeyChange{Primary: rec.Primary, Index: rec.LogIndex, SeenAt: c.now().Unix(),
					How: fmt.Sprintf("the log binds it to another key at entry %d, and shows no rotation signed by the key you had pinned", rec.LogIndex)}
			}
			ct.Status = ContactChanged
		}
		ct.Notices, p.Notices = p.Notices, nil
		ct.Pin = *p
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ct, nil
}

// current reads the log up to rec's checkpoint and checks that rec is the
// handle's latest change there (a server cannot answer with a binding the
// log has since replaced).
func (c *Client) current(ctx context.Context, rec *Record) error {
	v, err := c.logVerifier(ctx)
	if err != nil {
		return err
	}
	if err := c.advance(ctx, v, rec.Checkpoint, true, nil); err != nil {
		return err
	}
	st, err := c.trust.Load()
	if err != nil {
		return err
	}
	b, ok := st.Bindings[rec.Handle]
	switch {
	case !ok:
		return c.logFailure(c.display(rec.Handle)+"'s record", rec.LogIndex, "the log read up to its checkpoint never binds the handle")
	case b.Index != rec.LogIndex || b.Primary != rec.Primary:
		return c.logFailure(c.display(rec.Handle)+"'s record", rec.LogIndex, fmt.Sprintf("it is entry %d (key %s), but the log's latest change of %s is entry %d (key %s)",
			rec.LogIndex, shortKey(rec.Primary), rec.Handle, b.Index, orDeleted(b.Primary)))
	}
	return nil
}

func orDeleted(primary string) string {
	if primary == "" {
		return "deleted"
	}
	return shortKey(primary)
}

// Recipient looks up "bob" or "bob@server", checks it as Contact does and
// prepares encryption to them. A changed key is a *KeyChangedError: nothing
// is sent to it until the user accepts it. A user that does not exist gives
// an error for which IsUnknownUser is true.
func (c *Client) Recipient(ctx context.Context, to string) (*Recipient, error) {
	ct, err := c.Contact(ctx, to)
	if err != nil {
		return nil, err
	}
	if err := ct.KeyChange(); err != nil {
		return nil, err
	}
	r, err := c.RecipientFor(ct.Record)
	if err != nil {
		return nil, err
	}
	r.Contact = ct
	return r, nil
}

// PinnedRecipient prepares encryption to who's pinned key without asking
// any server, for a message to be kept in an outbox while who's server
// cannot be reached. A key changed and not accepted is refused as
// Recipient refuses it; a contact never looked up has no pin to use.
func (c *Client) PinnedRecipient(who string) (*Recipient, error) {
	store, handle := c.trustFor(who)
	st, err := store.Load()
	if err != nil {
		return nil, err
	}
	p := st.Contacts[handle]
	if p == nil {
		return nil, fmt.Errorf("no key is pinned for %s", who)
	}
	if p.Changed != nil {
		return nil, &KeyChangedError{Handle: p.Handle, Pinned: p.Primary, New: p.Changed.Primary, How: p.Changed.How, Verified: p.Verified != ""}
	}
	server := st.Server
	if server == "" {
		server = c.homeName()
	}
	rec := &Record{Handle: handle, Server: server, Address: kez.Address(handle, server), Primary: p.Primary}
	r, err := c.RecipientFor(rec)
	if err != nil {
		return nil, err
	}
	r.Contact = &Contact{Record: rec, Status: ContactPinned, Pin: *p, Remote: isRemoteStore(store)}
	return r, nil
}

// AcceptKey accepts the changed key of handle: sending to it is allowed
// again. A contact the user had verified is not accepted this way: they
// compare the new safety number and call MarkVerified.
func (c *Client) AcceptKey(who string) (*Pin, error) {
	var out Pin
	store, handle := c.trustFor(who)
	err := store.Update(func(st *TrustState) error {
		p := st.Contacts[handle]
		switch {
		case p == nil || p.Changed == nil:
			return ErrNoPendingKey
		case p.Changed.Primary == "":
			return fmt.Errorf("%s has no key now (%s); there is nothing to accept", p.Handle, p.Changed.How)
		case p.Verified != "":
			return &KeyChangedError{Handle: p.Handle, Pinned: p.Primary, New: p.Changed.Primary, How: p.Changed.How, Verified: true}
		}
		p.Previous = append(p.Previous, p.Primary)
		p.Primary, p.Changed = p.Changed.Primary, nil
		out = *p
		return nil
	})
	return &out, err
}

// MarkVerified records that the user compared the safety number of their
// key and primary with handle's (in person, or over a channel they trust).
// primary must be the handle's current key (pinned, or changed and not yet
// accepted, which this accepts).
func (c *Client) MarkVerified(who, primary string) (*Pin, error) {
	var out Pin
	store, handle := c.trustFor(who)
	err := store.Update(func(st *TrustState) error {
		p := st.Contacts[handle]
		switch {
		case p == nil:
			return fmt.Errorf("no key is pinned for %s; look them up first", who)
		case p.Changed != nil && p.Changed.Primary == primary:
			p.Previous = append(p.Previous, p.Primary)
			p.Primary, p.Changed = primary, nil
		case p.Changed == nil && p.Primary == primary:
		default:
			return fmt.Errorf("the key you compared (%s) is not %s's current key; look them up and compare again", shortKey(primary), who)
		}
		p.Verified, p.VerifiedAt = primary, c.now().Unix()
		out = *p
		return nil
	})
	return &out, err
}

// Unverify withdraws a verification.
func (c *Client) Unverify(who string) error {
	store, handle := c.trustFor(who)
	return store.Update(func(st *TrustState) error {
		if p := st.Contacts[handle]; p != nil {
			p.Verified, p.VerifiedAt = "", 0
		}
		return nil
	})
}

// SafetyNumber is the 60-digit safety number (SPEC §6) of the user's key
// and theirs.
func (c *Client) SafetyNumber(theirs string) (string, error) {
	keys := c.Keys()
	if keys == nil {
		return "", ErrNoIdentity
	}
	return kez.SafetyNumber(keys.Primary(), theirs)
}

// TakeNotices returns the rotation notices not yet shown, of every
// contact, and forgets them.
func (c *Client) TakeNotices() ([]Notice, error) {
	var out []Notice
	err := c.trust.Update(func(st *TrustState) error {
		for _, s := range append([]*TrustState{st}, slices.Collect(maps.Values(st.Remotes))...) {
			for _, p := range s.Contacts {
				out = append(out, p.Notices...)
				p.Notices = nil
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, err
}

// PinnedHandle names a key from the pins: the handle whose pinned,
// changed or earlier key it is ("" when none), and which of those. A
// contact of another server is named by its full address.
func (c *Client) PinnedHandle(primary string) (handle string, status string) {
	st, err := c.trust.Load()
	if err != nil {
		return "", ""
	}
	if h, how := pinnedIn(st.Contacts, primary); h != "" {
		return h, how
	}
	for _, server := range slices.Sorted(maps.Keys(st.Remotes)) {
		if h, how := pinnedIn(st.Remotes[server].Contacts, primary); h != "" {
			return kez.Address(h, server), how
		}
	}
	return "", ""
}

func pinnedIn(pins map[string]*Pin, primary string) (handle string, status string) {
	for h, p := range pins {
		switch {
		case p.Primary == primary:
			return h, "pinned"
		case p.Changed != nil && p.Changed.Primary == primary:
			return h, "changed"
		case slices.Contains(p.Previous, primary):
			return h, "previous"
		}
	}
	return "", ""
}

// DismissWarnings forgets the kept warnings (not a fork), those about
// other servers too.
func (c *Client) DismissWarnings() error {
	return c.trust.Update(func(st *TrustState) error {
		st.Warnings = nil
		for _, r := range st.Remotes {
			r.Warnings = nil
		}
		return nil
	})
}

// ResetLog forgets the pinned log key, the checkpoints and the log read,
// and with them a fork: the next contact pins the server's key again and
// reads its log from the start. Contacts' pins stay; each is checked
// against the log as it is read again. It is the user's decision, after a
// fork or a server that was reset.
func (c *Client) ResetLog() error {
	return c.trust.Update(func(st *TrustState) error {
		st.LogKey, st.Checkpoint, st.Fork = "", "", nil
		st.Scan, st.Bindings = kez.LogFrontier{}, map[string]Binding{}
		for _, p := range st.Contacts {
			p.Index = -1
		}
		if st.Self != nil {
			st.Self.Since = -1
		}
		return nil
	})
}

// MonitorReport is what Monitor found.
type MonitorReport struct {
	Checkpoint *kez.Checkpoint // the server's latest, verified
	Read       int64           // entries read and checked by this call
	Warnings   []Warning       // every warning kept (new ones included)
	Notices    []Notice        // rotations of contacts followed, not yet shown
}

// Monitor checks the user's own account (SPEC §5): it fetches the latest
// checkpoint, checks it against the ones kept, reads the entries since the
// last one checked (reporting any that binds the user's handle or key to
// something this device did not sign, and following contacts' rotations),
// and checks that the server's record of the handle is the user's key.
// Findings are kept as warnings; the error is for what stopped the check.
func (c *Client) Monitor(ctx context.Context) (*MonitorReport, error) {
	v, err := c.logVerifier(ctx)
	if err != nil {
		return nil, err
	}
	cp, err := c.LatestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	// The own record first: the first time, it says from which leaf on
	// entries about the handle must be the user's.
	if keys := c.Keys(); keys != nil && c.handle != "" {
		c.checkSelf(ctx, keys.Primary())
	}
	before, err := c.trust.Load()
	if err != nil {
		return nil, err
	}
	if before.Fork != nil {
		return nil, c.forkError(before.Fork)
	}
	if err := c.advance(ctx, v, cp, true, nil); err != nil {
		return nil, err
	}
	st, err := c.trust.Load()
	if err != nil {
		return nil, err
	}
	rep := &MonitorReport{Checkpoint: cp, Read: st.Scan.Size - before.Scan.Size, Warnings: st.Warnings}
	for _, p := range st.Contacts {
		rep.Notices = append(rep.Notices, p.Notices...)
	}
	sort.Slice(rep.Notices, func(i, j int) bool { return rep.Notices[i].Index < rep.Notices[j].Index })
	return rep, nil
}

// checkSelf asks the server for the user's own handle: it must be bound
// to the user's key. The first time, it starts the monitor of the handle
// from the binding's leaf.
func (c *Client) checkSelf(ctx context.Context, primary string) {
	st, err := c.trust.Load()
	if err != nil || st.Self != nil && st.Self.Deleted && st.Self.Handle == c.handle {
		return
	}
	rec, err := c.Lookup(ctx, c.handle)
	var warning string
	switch {
	case IsUnknownUser(err):
		warning = fmt.Sprintf("the server has no record of your handle %s", c.handle)
	case err != nil:
		return // said elsewhere (a failed proof is a warning already)
	case rec.Primary != primary && !slices.Contains(selfKeys(st), rec.Primary):
		warning = fmt.Sprintf("the server binds your handle %s to key %s, not to yours (%s)", c.handle, shortKey(rec.Primary), shortKey(primary))
	}
	_ = c.trust.Update(func(st *TrustState) error {
		if warning != "" {
			st.warn(WarnMonitor, -1, warning, c.now())
			return nil
		}
		if st.Self == nil || st.Self.Handle != c.handle {
			st.Self = &Self{Handle: c.handle, Keys: []string{primary}, Since: rec.LogIndex}
		} else if st.Self.Since < 0 {
			st.Self.Since = rec.LogIndex
		}
		if !slices.Contains(st.Self.Keys, primary) {
			st.Self.Keys = append(st.Self.Keys, primary)
		}
		return nil
	})
}

func selfKeys(st *TrustState) []string {
	if st.Self == nil {
		return nil
	}
	return st.Self.Keys
}

// LatestCheckpoint fetches GET /v1/log/checkpoint and verifies it under
// the pinned log key (not yet against the checkpoints kept).
func (c *Client) LatestCheckpoint(ctx context.Context) (*kez.Checkpoint, error) {
	v, err := c.logVerifier(ctx)
	if err != nil {
		return nil, err
	}
	var body []byte
	_, err = c.do(ctx, &call{method: http.MethodGet, path: "/v1/log/checkpoint", accept: "text/plain"},
		func(b []byte) error { body = b; return nil })
	if err != nil {
		return nil, err
	}
	cp, err := kez.OpenCheckpoint(body, v)
	if err != nil {
		return nil, c.logFailure("its latest checkpoint", -1, err.Error())
	}
	return cp, nil
}

// LogReport is what ReadLog found in a whole log.
type LogReport struct {
	Checkpoint                         *kez.Checkpoint
	Registrations, Rotations, Deletion int64
	Bound                              int // handles bound at the end
	Invalid                            []string
	Violations                         []string // changes the log's own history does not allow
}

// ReadLog downloads the whole log up to the latest checkpoint, checks
// that it is consistent with every checkpoint kept, that the entries hash
// to its root, that every entry is a validly signed change and that each
// change is allowed by those before it (one key per handle and one handle
// per key; rotations and deletions by the bound key). each, when not nil,
// sees every entry in order; what it sees counts only if ReadLog returns
// no error. A root that does not match is kept as a fork.
func (c *Client) ReadLog(ctx context.Context, each func(e *kez.LogEntry)) (*LogReport, error) {
	v, err := c.logVerifier(ctx)
	if err != nil {
		return nil, err
	}
	cp, err := c.LatestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.advance(ctx, v, cp, false, nil); err != nil {
		return nil, err
	}
	name, err := c.ServerName(ctx)
	if err != nil {
		return nil, err
	}
	st, err := c.trust.Load()
	if err != nil {
		return nil, err
	}
	rep := &LogReport{Checkpoint: cp}
	var f kez.LogFrontier
	handles := map[string]string{}   // handle → key ("" deleted)
	primaries := map[string]string{} // key → handle
	violation := func(format string, args ...any) {
		rep.Violations = append(rep.Violations, fmt.Sprintf(format, args...))
	}
	prefixDiffers := false
	err = c.readEntries(ctx, 0, cp.Size, func(index int64, data []byte) error {
		if err := f.Append(data); err != nil {
			return err
		}
		if index%logEntriesPage == 0 {
			f.Prune()
		}
		if f.Size == st.Scan.Size && st.Scan.Size > 0 {
			// The prefix read before must be the same log.
			got, _ := f.Root()
			want, _ := st.Scan.Root()
			prefixDiffers = got != want
		}
		e, err := kez.ParseLogEntry(index, data, name)
		if err != nil {
			rep.Invalid = append(rep.Invalid, err.Error())
			return nil
		}
		switch e.Kind {
		case kez.RegisterType:
			rep.Registrations++
			if k := handles[e.Handle]; k != "" {
				violation("entry %d registers %s, which entry before binds to %s", index, e.Handle, shortKey(k))
			}
			if h, ok := primaries[e.Primary]; ok {
				violation("entry %d binds key %s to %s, but it is bound to %s", index, shortKey(e.Primary), e.Handle, h)
			}
			handles[e.Handle], primaries[e.Primary] = e.Primary, e.Handle
		case kez.RotateType:
			rep.Rotations++
			if handles[e.Handle] != e.Old {
				violation("entry %d rotates %s from key %s, which is not bound to it", index, e.Handle, shortKey(e.Old))
			}
			if h, ok := primaries[e.Primary]; ok {
				violation("entry %d rotates %s to key %s, which is bound to %s", index, e.Handle, shortKey(e.Primary), h)
			}
			delete(primaries, e.Old)
			handles[e.Handle], primaries[e.Primary] = e.Primary, e.Handle
		case kez.DeleteType:
			rep.Deletion++
			if handles[e.Handle] != e.Primary {
				violation("entry %d deletes %s with key %s, which is not bound to it", index, e.Handle, shortKey(e.Primary))
			}
			delete(primaries, e.Primary)
			handles[e.Handle] = ""
		}
		if each != nil {
			each(e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	root, err := f.Root()
	if err != nil {
		return nil, err
	}
	if root != cp.Root {
		return nil, c.recordFork(cp, cp, fmt.Sprintf("the %d entries the server serves hash to root %s, not to the root its checkpoint signs", cp.Size, root))
	}
	if prefixDiffers {
		kept := &kez.Checkpoint{Note: st.Checkpoint}
		return nil, c.recordFork(kept, cp, fmt.Sprintf("the first %d entries hash to another root than the log this client read before", st.Scan.Size))
	}
	for _, k := range handles {
		if k != "" {
			rep.Bound++
		}
	}
	return rep, nil
}

// HandleHistory is every change of handle in the whole log (checked as
// ReadLog does), oldest first.
func (c *Client) HandleHistory(ctx context.Context, handle string) ([]*kez.LogEntry, *LogReport, error) {
	handle = kez.ASCIILower(handle)
	var out []*kez.LogEntry
	rep, err := c.ReadLog(ctx, func(e *kez.LogEntry) {
		if e.Handle == handle {
			out = append(out, compactEntry(e))
		}
	})
	if err != nil {
		return nil, nil, err
	}
	return out, rep, nil
}

// IsTrustFailure reports whether err is a failure of the server's log or
// keys (a fork, a failed proof, a changed key, a remote sender its server
// does not bind to the key that signed), as opposed to the network
// or an ordinary refusal.
func IsTrustFailure(err error) bool {
	var fe *ForkError
	var le *LogError
	var ke *KeyChangedError
	var se *SenderError
	return errors.As(err, &fe) || errors.As(err, &le) || errors.As(err, &ke) || errors.As(err, &se)
}
