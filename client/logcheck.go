package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gowebpki/jcs"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/kez"
)

// The checks of SPEC §5 on the client side: the log key pinned at first
// contact, every checkpoint verified under it and consistent with the
// largest one kept, every record's leaf proven in its checkpoint, and the
// log read forward (a frontier and the bindings it makes) so that records
// are known to be the current binding and contacts' rotations are followed.

// logEntriesPage is what one GET /v1/log/entries asks for (the server's cap).
const logEntriesPage = 1000

// errTrustConflict: another user of the store changed the state while this
// one was checking; the check is done again.
var errTrustConflict = errors.New("trust state changed meanwhile")

// trustAttempts bounds those repeats.
const trustAttempts = 4

// TrustState returns a copy of what the client keeps about the server.
func (c *Client) TrustState() (*TrustState, error) { return c.trust.Load() }

// logVerifier pins the server's log key if none is yet (from Options.LogKey,
// else from GET /v1/log/key), and returns its verifier. A fork kept in the
// state is returned as a *ForkError: until the user resets it, nothing the
// log says counts.
func (c *Client) logVerifier(ctx context.Context) (note.Verifier, error) {
	name, err := c.ServerName(ctx)
	if err != nil {
		return nil, err
	}
	st, err := c.trust.Load()
	if err != nil {
		return nil, err
	}
	if st.Fork != nil {
		return nil, c.forkError(st.Fork)
	}
	if st.Server != "" && st.Server != name {
		return nil, fmt.Errorf("the trust kept for %s is for a server named %q, but it now calls itself %q", c.base, st.Server, name)
	}
	if st.LogKey != "" {
		if c.logKey != "" && c.logKey != st.LogKey {
			return nil, fmt.Errorf("the log key you gave (%s) is not the one pinned for %s (%s)", c.logKey, name, st.LogKey)
		}
		return kez.ParseLogKey(st.LogKey, name)
	}
	vkey := c.logKey
	if vkey == "" {
		var body []byte
		_, err := c.do(ctx, &call{method: http.MethodGet, path: "/v1/log/key", accept: "text/plain"},
			func(b []byte) error { body = b; return nil })
		if err != nil {
			return nil, err
		}
		vkey = string(body)
	}
	if _, err := kez.ParseLogKey(vkey, name); err != nil {
		return nil, &ProtocolError{URL: c.base + "/v1/log/key", Reason: err.Error()}
	}
	pinned := ""
	err = c.trust.Update(func(st *TrustState) error {
		if st.LogKey == "" {
			st.Server, st.LogKey = name, strings.TrimSpace(vkey)
		}
		pinned = st.LogKey
		return nil
	})
	if err != nil {
		return nil, err
	}
	return kez.ParseLogKey(pinned, name)
}

// PinnedLogKey is the log key pinned for this server ("" before first contact).
func (c *Client) PinnedLogKey() (string, error) {
	st, err := c.trust.Load()
	if err != nil {
		return "", err
	}
	return st.LogKey, nil
}

// recordLeaf is the leaf data of the object that made a record's binding:
// its rotation when there is one, else its registration (SPEC §2.10, §5).
func recordLeaf(rec *Record) ([]byte, error) {
	obj := rec.Registration
	if len(rec.Rotation) > 0 {
		obj = rec.Rotation
	}
	return jcs.Transform(obj)
}

// proveLeaf checks a "log" member: the checkpoint under the pinned key,
// the inclusion of leaf in it, and the checkpoint's consistency with the
// largest one kept. A failure is a *LogError (also kept as a warning) or
// a *ForkError.
func (c *Client) proveLeaf(ctx context.Context, what string, leaf []byte, raw []byte) (*kez.LogProof, *kez.Checkpoint, error) {
	v, err := c.logVerifier(ctx)
	if err != nil {
		return nil, nil, err
	}
	if len(raw) == 0 {
		return nil, nil, c.logFailure(what, -1, "the server sent it without a log proof")
	}
	lp, err := kez.ParseLogProof(raw)
	if err != nil {
		return nil, nil, c.logFailure(what, -1, err.Error())
	}
	cp, err := kez.OpenCheckpoint([]byte(lp.Checkpoint), v)
	if err != nil {
		return nil, nil, c.logFailure(what, lp.Index, err.Error())
	}
	if err := cp.VerifyInclusion(lp.Index, leaf, lp.Inclusion); err != nil {
		return nil, nil, c.logFailure(what, lp.Index, err.Error()+": it is not the entry the log holds there")
	}
	if err := c.advance(ctx, v, cp, false, nil); err != nil {
		return nil, nil, err
	}
	return lp, cp, nil
}

// logFailure keeps a warning and returns the error.
func (c *Client) logFailure(what string, index int64, reason string) error {
	e := &LogError{What: what, Reason: reason}
	_ = c.trust.Update(func(st *TrustState) error {
		st.warn(WarnProof, max(index, 0), e.Error(), c.now())
		return nil
	})
	return e
}

// advance takes a verified checkpoint into the state: it must be
// consistent with the largest checkpoint kept (same size, same root;
// otherwise a consistency proof from the server), and becomes the largest
// if it is. With scan, the log is also read up to it: the entries since
// the last one checked, which must hash to its root, are applied to the
// bindings, the contacts' pins and the monitor of the user's own account.
// own are leaves this client is making (its registration, rotation or
// deletion), which the monitor does not report.
func (c *Client) advance(ctx context.Context, v note.Verifier, cp *kez.Checkpoint, scan bool, own [][]byte) error {
	ownHashes := make([]tlog.Hash, len(own))
	for i, leaf := range own {
		ownHashes[i] = kez.LeafHash(leaf)
	}
	for range trustAttempts {
		st, err := c.trust.Load()
		if err != nil {
			return err
		}
		if st.Fork != nil {
			return c.forkError(st.Fork)
		}
		var largest *kez.Checkpoint
		if st.Checkpoint != "" {
			if largest, err = kez.OpenCheckpoint([]byte(st.Checkpoint), v); err != nil {
				return fmt.Errorf("the kept checkpoint does not verify under the pinned key (%v); the trust state is damaged", err)
			}
		}
		if largest != nil {
			if err := c.consistent(ctx, largest, cp); err != nil {
				return err
			}
		}
		var scanned *scanResult
		if scan && st.Scan.Size < cp.Size {
			if scanned, err = c.scanTo(ctx, &st.Scan, cp); err != nil {
				return err
			}
		}
		err = c.trust.Update(func(cur *TrustState) error {
			if cur.Fork != nil {
				return c.forkError(cur.Fork)
			}
			if cur.Checkpoint != st.Checkpoint || cur.Scan.Size < st.Scan.Size {
				return errTrustConflict
			}
			changed := false
			if largest == nil || cp.Size > largest.Size {
				cur.Checkpoint, changed = cp.Note, true
			}
			if scanned != nil && scanned.frontier.Size > cur.Scan.Size {
				changed = true
				for _, it := range scanned.items {
					if it.index >= cur.Scan.Size {
						cur.apply(it, ownHashes, c.now())
					}
				}
				cur.Scan = scanned.frontier
			}
			if !changed {
				return ErrNoChange
			}
			return nil
		})
		if !errors.Is(err, errTrustConflict) {
			return err
		}
	}
	return errTrustConflict
}

// consistent checks cp against the largest checkpoint kept, asking the
// server for a consistency proof when their sizes differ. A proof that
// fails, or two roots for one size, is kept as a fork.
func (c *Client) consistent(ctx context.Context, largest, cp *kez.Checkpoint) error {
	older, newer := largest, cp
	if cp.Size < largest.Size {
		older, newer = cp, largest
	}
	var proof []tlog.Hash
	if older.Size > 0 && older.Size < newer.Size {
		var err error
		if proof, err = c.consistencyProof(ctx, older.Size, newer.Size); err != nil {
			return err
		}
	}
	if err := kez.VerifyConsistency(older, newer, proof); err != nil {
		return c.recordFork(largest, cp, err.Error())
	}
	return nil
}

// consistencyProof asks GET /v1/log/consistency?old=m&new=n.
func (c *Client) consistencyProof(ctx context.Context, m, n int64) ([]tlog.Hash, error) {
	var proof []tlog.Hash
	_, err := c.do(ctx, &call{method: http.MethodGet, path: "/v1/log/consistency", query: map[string]uint64{"old": uint64(m), "new": uint64(n)}},
		func(b []byte) (err error) { proof, err = kez.ParseConsistency(b); return err })
	return proof, err
}

// recordFork keeps the evidence of two histories and returns it as an error.
func (c *Client) recordFork(kept, other *kez.Checkpoint, reason string) error {
	f := &Fork{Kept: kept.Note, Other: other.Note, Reason: reason, SeenAt: c.now().Unix()}
	err := c.trust.Update(func(st *TrustState) error {
		if st.Fork == nil {
			st.Fork = f
		}
		f = st.Fork
		return nil
	})
	if err != nil {
		return err
	}
	return c.forkError(f)
}

// scanItem is one leaf read by a scan: its entry, or why it is not a
// valid signed change.
type scanItem struct {
	index int64
	entry *kez.LogEntry
	err   error
	hash  tlog.Hash // of the leaf data
}

type scanResult struct {
	frontier kez.LogFrontier
	items    []scanItem
}

// scanTo reads the entries from the frontier's size up to cp and checks
// that, added to the frontier, they hash to cp's root. Entries that do not
// are a fork: the server serves a log that is not the one it signed.
func (c *Client) scanTo(ctx context.Context, from *kez.LogFrontier, cp *kez.Checkpoint) (*scanResult, error) {
	name, err := c.ServerName(ctx)
	if err != nil {
		return nil, err
	}
	res := &scanResult{frontier: kez.LogFrontier{Size: from.Size, Hashes: maps.Clone(from.Hashes)}}
	err = c.readEntries(ctx, from.Size, cp.Size, func(index int64, data []byte) error {
		if err := res.frontier.Append(data); err != nil {
			return err
		}
		e, perr := kez.ParseLogEntry(index, data, name)
		res.items = append(res.items, scanItem{index: index, entry: compactEntry(e), err: perr, hash: kez.LeafHash(data)})
		if index%logEntriesPage == 0 {
			res.frontier.Prune()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.frontier.Prune()
	root, err := res.frontier.Root()
	if err != nil {
		return nil, err
	}
	if root != cp.Root {
		st, _ := c.trust.Load()
		kept := cp
		if st != nil && st.Checkpoint != "" {
			kept = &kez.Checkpoint{Note: st.Checkpoint}
		}
		return nil, c.recordFork(kept, cp, fmt.Sprintf("the entries %d to %d the server serves hash to root %s, not to the root its checkpoint %d signs",
			from.Size, cp.Size-1, root, cp.Size))
	}
	return res, nil
}

// compactEntry drops the leaf data, which the state does not need.
func compactEntry(e *kez.LogEntry) *kez.LogEntry {
	if e == nil {
		return nil
	}
	cp := *e
	cp.Data = nil
	return &cp
}

// readEntries calls each with every leaf from start to end-1, in order,
// page by page. A server that has fewer entries than its checkpoint counts
// is refused.
func (c *Client) readEntries(ctx context.Context, start, end int64, each func(index int64, data []byte) error) error {
	for start < end {
		n := min(end-start, logEntriesPage)
		var page [][]byte
		_, err := c.do(ctx, &call{method: http.MethodGet, path: "/v1/log/entries", query: map[string]uint64{"start": uint64(start), "limit": uint64(n)}},
			func(b []byte) (err error) { page, err = kez.ParseLogEntries(b, start); return err })
		if err != nil {
			return err
		}
		if len(page) == 0 || int64(len(page)) > n {
			return &LogError{What: "its checkpoint", Reason: fmt.Sprintf("the server answers %d entries from %d, where its checkpoint counts %d", len(page), start, end)}
		}
		for i, data := range page {
			if err := each(start+int64(i), data); err != nil {
				return err
			}
		}
		start += int64(len(page))
	}
	return nil
}

// apply takes one scanned leaf into the state: the handle's binding (with
// the log's own rules checked), the monitor of the user's own handle and
// keys, and the pin of a contact with that handle.
func (st *TrustState) apply(it scanItem, own []tlog.Hash, at time.Time) {
	if it.err != nil {
		st.warn(WarnLog, it.index, it.err.Error(), at)
		return
	}
	e := it.entry
	prev, had := st.Bindings[e.Handle]
	switch e.Kind {
	case kez.RegisterType:
		if had && prev.Primary != "" {
			st.warn(WarnLog, e.Index, fmt.Sprintf("log entry %d registers %s to key %s, but the log binds it to %s since entry %d and shows no deletion",
				e.Index, e.Handle, shortKey(e.Primary), shortKey(prev.Primary), prev.Index), at)
		}
		st.Bindings[e.Handle] = Binding{Primary: e.Primary, Index: e.Index}
	case kez.RotateType:
		if !had || prev.Primary != e.Old {
			st.warn(WarnLog, e.Index, fmt.Sprintf("log entry %d rotates %s from key %s, which the log does not bind to it", e.Index, e.Handle, shortKey(e.Old)), at)
		}
		st.Bindings[e.Handle] = Binding{Primary: e.Primary, Index: e.Index}
	case kez.DeleteType:
		if !had || prev.Primary != e.Primary {
			st.warn(WarnLog, e.Index, fmt.Sprintf("log entry %d deletes %s with key %s, which the log does not bind to it", e.Index, e.Handle, shortKey(e.Primary)), at)
		}
		st.Bindings[e.Handle] = Binding{Index: e.Index}
	}
	if !slices.Contains(own, it.hash) {
		st.monitorSelf(e, at)
	}
	if pin := st.Contacts[e.Handle]; pin != nil && e.Index > pin.Index {
		pin.follow(e, at)
	}
}

// monitorSelf reports an entry that binds the user's handle or keys to
// something this device did not sign.
func (st *TrustState) monitorSelf(e *kez.LogEntry, at time.Time) {
	s := st.Self
	if s == nil {
		return
	}
	ours := func(k string) bool { return k != "" && slices.Contains(s.Keys, k) }
	warn := func(format string, args ...any) {
		st.warn(WarnMonitor, e.Index, fmt.Sprintf("log entry %d ", e.Index)+fmt.Sprintf(format, args...), at)
	}
	if e.Handle == s.Handle && e.Index > s.Since && !s.Deleted {
		switch e.Kind {
		case kez.RegisterType:
			if !ours(e.Primary) {
				warn("binds your handle %s to key %s, which is not yours", e.Handle, shortKey(e.Primary))
			}
		case kez.RotateType:
			switch {
			case !ours(e.Old):
				warn("moves your handle %s from key %s, which is not yours, to %s", e.Handle, shortKey(e.Old), shortKey(e.Primary))
			case !ours(e.Primary):
				warn("moves your handle %s to key %s, which this device does not know; it is signed with your key %s", e.Handle, shortKey(e.Primary), shortKey(e.Old))
				s.Keys = append(s.Keys, e.Primary) // report it once
			}
		case kez.DeleteType:
			if ours(e.Primary) {
				warn("deletes your handle %s, signed with your key; this device did not do it", e.Handle)
			} else {
				warn("deletes your handle %s with key %s, which is not yours", e.Handle, shortKey(e.Primary))
			}
			s.Deleted = true
		}
		return
	}
	if e.Handle != s.Handle && (ours(e.Primary) || ours(e.Old)) {
		warn("binds your key to the handle %s (signed with your key); this device did not do it", e.Handle)
	}
}

// follow applies a change of a pinned contact's handle (SPEC §6): a
// rotation signed by the pinned key is followed with a notice; any other
// change is held as Changed until the user accepts it.
func (p *Pin) follow(e *kez.LogEntry, at time.Time) {
	p.Index = e.Index
	change := func(primary, how string) {
		p.Changed = &KeyChange{Primary: primary, How: how, Index: e.Index, SeenAt: at.Unix()}
	}
	switch e.Kind {
	case kez.RotateType:
		switch {
		case p.Changed == nil && e.Old == p.Primary:
			p.Previous = append(p.Previous, p.Primary)
			p.Primary = e.Primary
			p.Notices = append(p.Notices, Notice{Handle: p.Handle, Old: e.Old, New: e.Primary, Index: e.Index, TS: e.TS})
		case p.Changed != nil && p.Changed.Primary == e.Old:
			// The key not accepted rotated on: still not accepted.
			change(e.Primary, fmt.Sprintf("%s, then rotated at log entry %d", p.Changed.How, e.Index))
		default:
			change(e.Primary, fmt.Sprintf("rotated at log entry %d from key %s, which is not the key you had pinned", e.Index, shortKey(e.Old)))
		}
	case kez.RegisterType:
		switch {
		case e.Primary == p.Primary:
			p.Changed = nil // the pinned key itself registered the handle again
		case p.Changed != nil && p.Changed.Primary == "":
			change(e.Primary, fmt.Sprintf("%s, then registered again by another key at log entry %d", p.Changed.How, e.Index))
		default:
			change(e.Primary, fmt.Sprintf("registered again by another key at log entry %d", e.Index))
		}
	case kez.DeleteType:
		change("", fmt.Sprintf("the account was deleted at log entry %d", e.Index))
	}
}
