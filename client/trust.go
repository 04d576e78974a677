package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kezchat/kez/kez"
)

// Trust (SPEC §5, §6). What a client has learned about one server is kept
// in a TrustState, saved through a TrustStore between runs:
//
//   - the server's log key, pinned at first contact (or given by the user);
//   - the largest checkpoint it has verified, against which every newer or
//     older checkpoint must be consistent;
//   - the prefix of the log it has read and checked (a frontier and the
//     binding of every handle in it), which answers "is this record the
//     current binding?" and lets it follow contacts' rotations;
//   - the user's own handle and keys, so that any entry binding them to
//     something this device did not sign is reported;
//   - a pinned key per contact (trust on first use), with rotations
//     followed and every other change held until the user accepts it;
//   - warnings: a failed proof, a fork, a monitor finding. They stay until
//     the user dismisses them; a fork also stops every check that needs
//     the log until the user resets it.

// TrustState is everything a client keeps about one server's log and keys.
// Its JSON form is what TrustStore implementations save.
type TrustState struct {
	// Server is the server's name; the log's origin is Server+"/kez-log".
	Server string `json:"server"`
	// LogKey is the pinned note verifier key of the server's log.
	LogKey string `json:"log_key,omitempty"`
	// Checkpoint is the largest verified checkpoint note.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Fork, once set, is evidence that the server showed two histories.
	// It stays until ResetLog.
	Fork *Fork `json:"fork,omitempty"`
	// Warnings are kept until DismissWarnings.
	Warnings []Warning `json:"warnings,omitempty"`
	// Scan is the checked prefix of the log.
	Scan kez.LogFrontier `json:"scan"`
	// Bindings is the state of every handle after Scan: its key, or "" once
	// deleted, and the leaf of its last change.
	Bindings map[string]Binding `json:"bindings,omitempty"`
	// Self is the user's own account on this server, nil when none.
	Self *Self `json:"self,omitempty"`
	// Contacts are the pinned keys, by handle.
	Contacts map[string]*Pin `json:"contacts,omitempty"`
	// Remotes is what the client keeps about other servers (SPEC §8), by
	// server name: each one's own pinned log key, checkpoints, log read,
	// warnings and pinned contacts (so a remote contact's pin is keyed by
	// its full address: server, then handle). A remote state has no Self
	// and no Remotes. States saved before federation have none, and read
	// as they are.
	Remotes map[string]*TrustState `json:"remotes,omitempty"`
}

// Binding is a handle's state in the log.
type Binding struct {
	Primary string `json:"primary,omitempty"` // "" after a deletion
	Index   int64  `json:"index"`             // the leaf of its last change
}

// Fork is evidence of two histories: two checkpoints signed by the log key
// that no consistency proof joins, or entries that do not hash to the
// checkpoint they were served for.
type Fork struct {
	Kept   string `json:"kept"`   // the checkpoint note kept
	Other  string `json:"other"`  // the checkpoint note that contradicts it
	Reason string `json:"reason"` // what failed
	SeenAt int64  `json:"seen_at"`
}

// Warning is a finding kept until the user dismisses it.
type Warning struct {
	Kind   string `json:"kind"`            // WarnProof, WarnMonitor, WarnLog
	Index  int64  `json:"index,omitempty"` // the log leaf it concerns, when one does
	Text   string `json:"text"`
	SeenAt int64  `json:"seen_at"`
}

// Warning kinds.
const (
	// WarnProof: a record or receipt whose proof did not verify, or that is
	// not the binding the log shows.
	WarnProof = "proof"
	// WarnMonitor: an entry binds the user's handle or key to something this
	// device did not sign.
	WarnMonitor = "monitor"
	// WarnLog: an entry that is not a valid signed change, or a change the
	// log's own history does not allow (a handle registered twice, a
	// rotation from a key that was not bound).
	WarnLog = "log"
)

// Self is the user's own account as monitored.
type Self struct {
	Handle string `json:"handle"`
	// Keys are every key of the user's on this server, oldest first; the
	// last is the current one (or the one a rotation in progress moves to).
	Keys []string `json:"keys"`
	// Since is the leaf of the registration; later entries about the handle
	// must be signed by Keys.
	Since   int64 `json:"since"`
	Deleted bool  `json:"deleted,omitempty"`
}

// Pin is a contact's pinned key (SPEC §6).
type Pin struct {
	Handle  string `json:"handle"`
	Primary string `json:"primary"` // the accepted key
	// Index is the last leaf about the handle applied to this pin; -1
	// when it must be found again (after ResetLog).
	Index    int64 `json:"index"`
	PinnedAt int64 `json:"pinned_at"`
	// Verified is the key whose safety number the user compared ("" when
	// none). Only Verified == Primary makes the contact verified now.
	Verified   string `json:"verified,omitempty"`
	VerifiedAt int64  `json:"verified_at,omitempty"`
	// Previous are keys the contact had before, oldest first.
	Previous []string `json:"previous,omitempty"`
	// Notices are rotations followed and not yet shown.
	Notices []Notice `json:"notices,omitempty"`
	// Changed is a change of key that was not a rotation signed by the
	// pinned key: sending is blocked until the user accepts it.
	Changed *KeyChange `json:"changed,omitempty"`
}

// IsVerified reports whether the user compared the safety number of the
// contact's current key.
func (p *Pin) IsVerified() bool { return p.Verified != "" && p.Verified == p.Primary }

// Notice says a contact rotated to a new key signed by the pinned one.
type Notice struct {
	Handle string `json:"handle"`
	Old    string `json:"old"`
	New    string `json:"new"`
	Index  int64  `json:"index"` // the rotation's leaf
	TS     int64  `json:"ts"`    // when the contact signed it
}

func (n Notice) String() string {
	return fmt.Sprintf("%s rotated to a new key (%s), signed by the key you had pinned (log entry %d, %s)",
		n.Handle, shortKey(n.New), n.Index, time.Unix(n.TS, 0).UTC().Format("2006-01-02 15:04 UTC"))
}

// KeyChange is a change of a contact's key that the user has not accepted.
type KeyChange struct {
	Primary string `json:"primary"` // the key the handle is bound to now ("" while deleted)
	How     string `json:"how"`     // what the log (or the server) showed
	Index   int64  `json:"index"`   // the leaf that made it, -1 when not from the log
	SeenAt  int64  `json:"seen_at"`
}

// TrustStore keeps a TrustState between runs. Update must be atomic with
// respect to other users of the same store (other processes too): it reads
// the current state, runs fn on it and saves it if fn returns nil. When fn
// returns ErrNoChange, nothing is saved and Update returns nil.
type TrustStore interface {
	Load() (*TrustState, error)
	Update(fn func(*TrustState) error) error
}

// ErrNoChange, returned by an Update function, means it changed nothing:
// the store need not write.
var ErrNoChange = errors.New("trust state unchanged")

// MemoryTrust is a TrustStore that keeps the state in memory only:
// nothing is remembered after the process ends.
func MemoryTrust() TrustStore { return &memoryTrust{} }

type memoryTrust struct {
	mu    sync.Mutex
	state []byte
}

func (m *memoryTrust) Load() (*TrustState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return decodeTrust(m.state)
}

func (m *memoryTrust) Update(fn func(*TrustState) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, err := decodeTrust(m.state)
	if err != nil {
		return err
	}
	if err := fn(st); errors.Is(err, ErrNoChange) {
		return nil
	} else if err != nil {
		return err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	m.state = b
	return nil
}

// decodeTrust reads a saved state; nil or empty is a fresh one.
func decodeTrust(b []byte) (*TrustState, error) {
	st := &TrustState{}
	if len(b) > 0 {
		if err := json.Unmarshal(b, st); err != nil {
			return nil, fmt.Errorf("trust state is damaged: %v", err)
		}
	}
	st.init()
	return st, nil
}

func (st *TrustState) init() {
	if st.Bindings == nil {
		st.Bindings = map[string]Binding{}
	}
	if st.Contacts == nil {
		st.Contacts = map[string]*Pin{}
	}
}

// maxWarnings bounds the warnings kept; the oldest go first.
const maxWarnings = 50

// warn adds a warning unless the same one is kept already.
func (st *TrustState) warn(kind string, index int64, text string, now time.Time) {
	for _, w := range st.Warnings {
		if w.Kind == kind && w.Text == text {
			return
		}
	}
	st.Warnings = append(st.Warnings, Warning{Kind: kind, Index: index, Text: text, SeenAt: now.Unix()})
	if len(st.Warnings) > maxWarnings {
		st.Warnings = slices.Delete(st.Warnings, 0, len(st.Warnings)-maxWarnings)
	}
}

// ForkError is returned, again and again, once a server has shown two
// histories. Only ResetLog (the user's decision) clears it.
type ForkError struct {
	Fork *Fork
	// Server names a remote server (SPEC §8); "" for the user's own.
	Server string
}

func (e *ForkError) Error() string {
	kept, other := describeNote(e.Fork.Kept), describeNote(e.Fork.Other)
	who, status := "the server", "kez log status"
	if e.Server != "" {
		who, status = "the server "+e.Server, "kez log status --remote "+e.Server
	}
	return fmt.Sprintf("%s showed two histories: checkpoint %s vs %s (%s); nothing it says about keys can be trusted until you decide what to do (%s)",
		who, kept, other, e.Fork.Reason, status)
}

// forkError is the error of a kept fork, naming a remote server.
func (c *Client) forkError(f *Fork) *ForkError {
	e := &ForkError{Fork: f}
	if c.home != nil {
		e.Server = c.serverName
	}
	return e
}

// describeNote names a checkpoint note by its size and root.
func describeNote(n string) string {
	lines := strings.SplitN(n, "\n", 4)
	if len(lines) < 3 {
		return fmt.Sprintf("%.60q", n)
	}
	return fmt.Sprintf("%.20s (root %.44s)", lines[1], lines[2])
}

// LogError means the server's log did not prove what it had to: a record
// whose inclusion proof fails, a checkpoint not signed by the pinned key,
// a record that is not the handle's current binding. The same finding is
// kept as a warning.
type LogError struct {
	What   string // "bob's record", "your registration"
	Reason string
}

func (e *LogError) Error() string {
	return "the server's binding log does not back " + e.What + ": " + e.Reason
}

// KeyChangedError: a contact's key changed in a way that was not a
// rotation signed by the pinned key. Sending is refused until AcceptKey,
// or, for a contact the user had verified, until MarkVerified.
type KeyChangedError struct {
	Handle   string
	Pinned   string // the key the user accepted
	New      string // the key the server binds now ("" while deleted)
	How      string
	Verified bool // the user had verified Pinned
}

func (e *KeyChangedError) Error() string {
	next := "accept it only if you know why: kez accept-key " + e.Handle
	if e.Verified {
		next = "you had verified the old key; compare the new safety number before writing: kez verify " + e.Handle
	}
	if e.New == "" {
		return fmt.Sprintf("%s's key %s is no longer bound: %s", e.Handle, shortKey(e.Pinned), e.How)
	}
	return fmt.Sprintf("%s's key changed from %s to %s (%s); sending is blocked; %s",
		e.Handle, shortKey(e.Pinned), shortKey(e.New), e.How, next)
}

// ErrNoPendingKey: AcceptKey found no changed key to accept.
var ErrNoPendingKey = errors.New("no changed key to accept")

// shortKey names a primary by the start of its hex: "d75a9801…".
func shortKey(primary string) string {
	h := strings.TrimPrefix(primary, kez.PrimaryPrefix)
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return primary
}
