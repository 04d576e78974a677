package client

import (
	"context"
	"fmt"

	"github.com/kezchat/kez/kez"
)

// SenderError: a message's from_addr names a user of another server, and
// that server's record of the address (verified in its log) does not bind
// it to the key that signed the message. The message is not from that
// address as far as this client can tell.
type SenderError struct {
	Addr    string // the address the message came with
	Primary string // the key that signed it
	Bound   string // the key the address's server binds it to
	// Previous: Primary is a key the user had pinned for Addr before a
	// rotation (an older message), not a stranger's.
	Previous bool
}

func (e *SenderError) Error() string {
	if e.Previous {
		return fmt.Sprintf("signed by an earlier key of %s (%s); it now has key %s", e.Addr, shortKey(e.Primary), shortKey(e.Bound))
	}
	return fmt.Sprintf("%s is bound to key %s at its server, not to the key that signed this message (%s)", e.Addr, shortKey(e.Bound), shortKey(e.Primary))
}

// Sender finds who signed a message: primary is the key the server
// authenticated (Message.From, which Open checks against the envelope)
// and fromAddr the address it came with (Message.FromAddr). A user of this
// server is found by their key, as ContactByPrimary does. A user of another
// server (SPEC §8) is looked up at their own server, checked there under
// its pinned log key like a local record, and must be bound to primary
// there; else the error is a *SenderError. With pin, a key seen for the
// first time is pinned.
func (c *Client) Sender(ctx context.Context, primary, fromAddr string, pin bool) (*Contact, error) {
	handle, server := kez.SplitAddress(fromAddr)
	other, err := c.isOther(ctx, server)
	if err != nil {
		return nil, err
	}
	if !other || c.home != nil {
		return c.ContactByPrimary(ctx, primary, pin)
	}
	if !kez.ValidHandle(handle) {
		return nil, &SenderError{Addr: fromAddr, Primary: primary, Bound: "(not an address)"}
	}
	rc, err := c.remote(ctx, server, handle)
	if err != nil {
		return nil, err
	}
	rec, err := rc.Lookup(ctx, handle)
	if err != nil {
		return nil, err
	}
	if rec.Primary != primary {
		// Check the record first, so a pin follows a rotation it shows.
		if _, err := rc.contactFor(ctx, rec, false); err != nil {
			return nil, err
		}
		previous := false
		if st, err := rc.trust.Load(); err == nil && st.Contacts[handle] != nil {
			p := st.Contacts[handle]
			for _, k := range p.Previous {
				previous = previous || k == primary
			}
		}
		return nil, &SenderError{Addr: rec.Address, Primary: primary, Bound: rec.Primary, Previous: previous}
	}
	return rc.contactFor(ctx, rec, pin)
}
