// Package storage defines what KEZ chat needs from a backend: a registry of
// handles and primaries, and durable per-handle inboxes. It knows nothing of
// HTTP; backends live in sub-packages (bolt is the zero-setup default).
package storage

import (
	"context"
	"encoding/json"
	"errors"
	"time"
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
)

// Record binds a handle to a primary. Registration is the signed body as
// accepted, with its payload in canonical (JCS) form.
type Record struct {
	Handle       string          `json:"handle"`
	Primary      string          `json:"primary"`
	RegisteredAt int64           `json:"registered_at"` // unix seconds
	Registration json.RawMessage `json:"registration"`
}

// Message is one stored envelope in an inbox.
type Message struct {
	Seq        uint64 // positive, strictly increasing per inbox, never reused
	ReceivedAt int64  // unix milliseconds
	Envelope   []byte // compact JSON object, opaque to the server
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
	Register(ctx context.Context, rec Record, invite string) (stored Record, created bool, err error)
	// Lookup returns the record of a handle, or ErrNotFound.
	Lookup(ctx context.Context, handle string) (Record, error)
	// LookupPrimary returns the record bound to a primary, or ErrNotFound.
	LookupPrimary(ctx context.Context, primary string) (Record, error)

	// Append stores an envelope in a registered handle's inbox and returns
	// only once it is durable. ErrNotFound for an unknown handle, ErrInboxFull
	// when the inbox already holds maxInbox messages (0 = no cap).
	Append(ctx context.Context, handle string, envelope []byte, maxInbox int) (Message, error)
	// Read returns up to limit messages with Seq > since, ascending, and
	// whether more follow.
	Read(ctx context.Context, handle string, since uint64, limit int) (msgs []Message, more bool, err error)
	// Ack deletes every message with Seq <= upto and returns how many.
	Ack(ctx context.Context, handle string, upto uint64) (int, error)
	// Expire deletes messages received before cutoff, a little at a time.
	Expire(ctx context.Context, cutoff time.Time) (int, error)

	// Ping reports whether the storage can be read.
	Ping(ctx context.Context) error
	// Close releases the backend; later calls return ErrClosed.
	Close() error
}
