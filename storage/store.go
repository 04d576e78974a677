// Package storage defines what KEZ chat needs from a backend: a registry of
// handles and primaries, and durable per-handle inboxes. It knows nothing of
// HTTP; backends live in sub-packages (bolt is the zero-setup default).
package storage

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Errors every backend returns for the same conditions; anything else means
// the storage itself failed.
var (
	ErrNotFound     = errors.New("not found")
	ErrHandleTaken  = errors.New("handle already registered")
	ErrPrimaryTaken = errors.New("primary already bound to another handle")
	ErrInboxFull    = errors.New("inbox full")
	ErrInviteUsed   = errors.New("invite already used")
	ErrClosed       = errors.New("storage closed")
	// ErrBlocked: the recipient has blocked the sender (SPEC §2.9).
	ErrBlocked = errors.New("sender is blocked")
	// ErrCoolingDown: the handle was deleted less than handle_cooldown ago.
	ErrCoolingDown = errors.New("handle is cooling down after a deletion")
	// ErrRequestLimit: a stranger's message would exceed Limits.RequestLimit
	// or Limits.MaxRequests (SPEC §2.5).
	ErrRequestLimit = errors.New("too many message requests")
)

// Record binds a handle to a primary. Registration is the signed body as
// accepted, with its payload in canonical (JCS) form.
type Record struct {
	Handle       string          `json:"handle"`
	Primary      string          `json:"primary"`
	RegisteredAt int64           `json:"registered_at"` // unix seconds
	Registration json.RawMessage `json:"registration"`
	// Rotation is the latest signed rotation (its JCS form, as logged) that
	// made Primary the handle's key; nil when Primary came by registration.
	Rotation json.RawMessage `json:"rotation,omitempty"`
	// LogIndex is the binding log leaf of the object that made the current
	// binding: the registration, or the rotation if there is one (SPEC §5).
	LogIndex int64 `json:"log_index"`
}

// Message is one stored envelope in an inbox.
type Message struct {
	Seq        uint64 // positive, strictly increasing per inbox, never reused
	ReceivedAt int64  // unix milliseconds
	From       string // the sender the server authenticated: its primary
	FromAddr   string // the sender's address (handle@server) as verified at receipt
	// Request is true while the sender is a stranger to the inbox owner
	// (SPEC §2.5): stored while not accepted, and not accepted since.
	Request  bool
	Envelope []byte // compact JSON object, opaque to the server
}

// Delivery is one envelope to store, with what the server proved about it.
type Delivery struct {
	To       string // the recipient's handle
	From     string // the authenticated sender's primary (= envelope.from)
	FromAddr string // the sender's verified address
	// Sig is envelope.sig: with From, the idempotency key of the message.
	// A Delivery whose (From, Sig) is already stored or was acknowledged
	// within retention is not stored again (SPEC §2.5).
	Sig      string
	Envelope []byte // compact JSON object
	// SenderHandle is the sender's local handle ("" for a remote sender):
	// sending accepts the recipient in the sender's own inbox (SPEC §2.9),
	// so that ToPrimary's answers are never requests.
	SenderHandle string
	ToPrimary    string // the recipient's current primary
}

// Limits bound an inbox (SPEC §2.5, §2.8); 0 means no bound.
type Limits struct {
	MaxInbox     int // messages from accepted senders
	RequestLimit int // unacknowledged requests per stranger
	MaxRequests  int // unacknowledged requests per inbox
}

// RemoteLog is what this server keeps about another server's binding log,
// to verify that server's users when they write here (SPEC §8).
type RemoteLog struct {
	Server string `json:"server"`
	// Key is the log's verifier key (note.NewVerifier form), pinned at
	// first contact.
	Key string `json:"key"`
	// Checkpoint is the largest checkpoint seen from it, a signed note.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Forked, when set, says why the server is refused: it showed a
	// checkpoint inconsistent with Checkpoint (Evidence). It stays until
	// an operator forgets the pin.
	Forked   string `json:"forked,omitempty"`
	Evidence string `json:"evidence,omitempty"`
	Updated  int64  `json:"updated"` // unix seconds
}

// ContactState is a change to an inbox owner's contact lists (SPEC §2.9).
type ContactState int

// Contact list changes.
const (
	// Accept makes the sender a contact (and unblocks it): its stored
	// requests become ordinary messages.
	Accept ContactState = iota + 1
	// Unaccept withdraws an acceptance: the sender is a stranger again.
	Unaccept
	// Block refuses the sender's messages (and withdraws any acceptance);
	// its stored requests are deleted.
	Block
	// Unblock lifts a block: the sender is a stranger again.
	Unblock
)

// Contacts are an inbox owner's lists of primaries, each sorted.
type Contacts struct {
	Accepted []string // explicitly or implicitly (by sending) accepted
	Blocked  []string
}

// Notify is called after every durable append, in commit order per inbox,
// outside any storage lock. Live delivery (the SSE hub) hangs off it, so a
// backend shared by several servers calls it for appends made anywhere.
type Notify func(handle string, m Message)

// Store is a KEZ chat backend. All methods are safe for concurrent use.
type Store interface {
	// Register binds rec.Handle to rec.Primary atomically. If the handle is
	// already bound to the same primary it returns the existing record and
	// created=false; otherwise ErrHandleTaken or ErrPrimaryTaken. A non-empty
	// invite (an opaque key, e.g. a token's hash) is consumed in the same
	// transaction, once ever: ErrInviteUsed the second time.
	//
	// A new binding appends rec.Registration (already JCS) to the binding
	// log in the same durable transaction and returns the record with its
	// LogIndex; an idempotent retry appends nothing. A handle whose
	// deletion's cooldownUntil is after rec.RegisteredAt (the server's
	// clock) is ErrCoolingDown.
	Register(ctx context.Context, rec Record, invite string) (stored Record, created bool, err error)
	// Rotate moves handle from its current primary old to new, in one
	// durable transaction with the log append of rotation (the JCS form of
	// the signed rotation object, SPEC §2.10): ErrNotFound unless handle
	// is bound to old, ErrPrimaryTaken if new is bound to any handle. The
	// inbox stays; every inbox's acceptance or block of old moves to new
	// (SPEC §2.9). It returns the new record (Rotation set, LogIndex of
	// the rotation leaf; Registration and RegisteredAt kept).
	Rotate(ctx context.Context, handle, old, new string, rotation []byte) (Record, error)
	// Delete ends handle's binding to primary (ErrNotFound unless bound to
	// it), deletes its inbox and contact lists, holds the handle until
	// cooldownUntil (Register answers ErrCoolingDown meanwhile) and appends
	// deletion (the JCS form of the signed deletion object) to the log, all
	// in one durable transaction. It returns the deletion's log index.
	Delete(ctx context.Context, handle, primary string, deletion []byte, cooldownUntil time.Time) (index int64, err error)
	// Lookup returns the record of a handle, or ErrNotFound.
	Lookup(ctx context.Context, handle string) (Record, error)
	// LookupPrimary returns the record bound to a primary, or ErrNotFound.
	LookupPrimary(ctx context.Context, primary string) (Record, error)

	// Append stores an envelope in a registered handle's inbox and returns
	// only once it is durable, checking in this order: ErrNotFound for an
	// unknown handle; a duplicate (same From and Sig stored or acknowledged
	// within retention) returns the original message's Seq and ReceivedAt
	// with fresh=false and stores nothing; ErrBlocked for a blocked sender;
	// a sender not accepted makes a request, ErrRequestLimit beyond
	// lim.RequestLimit (this sender) or lim.MaxRequests (this inbox);
	// ErrInboxFull when an accepted sender finds lim.MaxInbox messages from
	// accepted senders. Requests never count against MaxInbox. A local
	// sender (d.SenderHandle) accepts d.ToPrimary in its own inbox.
	Append(ctx context.Context, d Delivery, lim Limits) (m Message, fresh bool, err error)
	// Read returns up to limit messages with Seq > since, ascending, and
	// whether more follow.
	Read(ctx context.Context, handle string, since uint64, limit int) (msgs []Message, more bool, err error)
	// Ack deletes every message with Seq <= upto and returns how many.
	Ack(ctx context.Context, handle string, upto uint64) (int, error)
	// Expire deletes messages received before cutoff, a little at a time,
	// and forgets the idempotency keys of messages received before it.
	Expire(ctx context.Context, cutoff time.Time) (int, error)

	// SetContact changes how handle's inbox treats the sender primary.
	// ErrNotFound for an unknown handle.
	SetContact(ctx context.Context, handle, primary string, state ContactState) error
	// Contacts returns handle's lists. ErrNotFound for an unknown handle.
	Contacts(ctx context.Context, handle string) (Contacts, error)

	// Once records key (a hash of a signed request) as used until the
	// given time and reports whether it was new: false means the request
	// was seen before. With several servers on one backend the record is
	// shared by all of them. Memory is bounded by what is unexpired.
	Once(ctx context.Context, key [32]byte, until time.Time) (fresh bool, err error)

	// The binding log (SPEC §5): an append-only Merkle tree of every
	// registration, rotation and deletion, shared by every server on the
	// backend, never rewritten. Leaves are numbered from 0.

	// LogSize is the number of leaves.
	LogSize(ctx context.Context) (int64, error)
	// LogHashes returns the stored hashes at the given tlog.StoredHashIndex
	// positions (a tlog.HashReader); every index must be below
	// tlog.StoredHashCount(LogSize).
	LogHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error)
	// LogEntries returns the data of up to n leaves from start.
	LogEntries(ctx context.Context, start int64, n int) ([][]byte, error)
	// LogKey returns the log's note signer key (note.GenerateKey form,
	// named <server>/kez-log), made on first use and kept, one for every
	// server on the backend.
	LogKey(ctx context.Context, name string) (signerKey string, err error)

	// What this server keeps about other servers' binding logs (SPEC §8),
	// shared by every server on the backend.

	// RemoteLog returns what is kept about server's log, or ErrNotFound.
	RemoteLog(ctx context.Context, server string) (RemoteLog, error)
	// UpdateRemoteLog changes what is kept about server's log atomically:
	// fn gets the current state (found=false: none yet) and returns the
	// new one. fn may be called more than once (when another server
	// changed it meanwhile); an error from fn is returned as is and
	// changes nothing.
	UpdateRemoteLog(ctx context.Context, server string, fn func(cur RemoteLog, found bool) (RemoteLog, error)) (RemoteLog, error)
	// ForgetRemoteLog removes what is kept about server's log (an
	// operator's re-pin); no error when there is nothing.
	ForgetRemoteLog(ctx context.Context, server string) error

	// Ping reports whether the storage can be read.
	Ping(ctx context.Context) error
	// Close releases the backend; later calls return ErrClosed.
	Close() error

	// Web Push (SPEC §7, push.go). Deleting a handle deletes its
	// subscriptions with its inbox.

	// PushKey returns the VAPID private key (a P-256 scalar) shared by
	// every server on the backend: the stored one, or fresh when none is
	// stored yet (then fresh is stored, once, whoever asks first).
	PushKey(ctx context.Context, fresh []byte) ([]byte, error)
	// PutPush stores sub for a registered handle (ErrNotFound otherwise),
	// replacing the one with the same endpoint; beyond max subscriptions
	// the oldest (by Created) are dropped.
	PutPush(ctx context.Context, handle string, sub PushSubscription, max int) error
	// DeletePush removes handle's subscription to endpoint and reports
	// whether there was one.
	DeletePush(ctx context.Context, handle, endpoint string) (bool, error)
	// PushSubscriptions returns handle's subscriptions, oldest first.
	PushSubscriptions(ctx context.Context, handle string) ([]PushSubscription, error)
}
