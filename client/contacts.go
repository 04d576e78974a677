package client

import (
	"context"
	"fmt"
	"net/http"

	"github.com/kezchat/kez/kez"
)

// Contacts are the inbox owner's lists (SPEC §2.9): senders whose messages
// are not requests (including those accepted implicitly, by having been
// written to), and senders whose messages are refused.
type Contacts struct {
	Accepted []string // primaries
	Blocked  []string
}

// Contacts reads the client's own lists.
func (c *Client) Contacts(ctx context.Context) (*Contacts, error) {
	if c.handle == "" {
		return nil, ErrNoIdentity
	}
	var out *Contacts
	_, err := c.do(ctx, &call{method: http.MethodGet, path: c.inboxPath() + "/contacts", signed: true},
		func(b []byte) (err error) { out, err = parseContacts(b); return err })
	return out, err
}

// Accept makes primary a contact: its messages are no longer requests, and
// its stored requests become ordinary messages.
func (c *Client) Accept(ctx context.Context, primary string) error {
	return c.setContact(ctx, http.MethodPut, "contacts", primary)
}

// Unaccept withdraws an acceptance: the sender is a stranger again.
func (c *Client) Unaccept(ctx context.Context, primary string) error {
	return c.setContact(ctx, http.MethodDelete, "contacts", primary)
}

// Block refuses primary's messages (403 blocked to the sender) and deletes
// its stored requests.
func (c *Client) Block(ctx context.Context, primary string) error {
	return c.setContact(ctx, http.MethodPut, "blocked", primary)
}

// Unblock lifts a block: the sender is a stranger again.
func (c *Client) Unblock(ctx context.Context, primary string) error {
	return c.setContact(ctx, http.MethodDelete, "blocked", primary)
}

func (c *Client) setContact(ctx context.Context, method, list, primary string) error {
	if c.handle == "" {
		return ErrNoIdentity
	}
	if !kez.WellFormedPrimary(primary) {
		return fmt.Errorf("%.80q is not a primary (ed25519:<64 lowercase hex>)", primary)
	}
	_, err := c.do(ctx, &call{method: method, path: c.inboxPath() + "/" + list + "/" + primary, signed: true}, nil)
	return err
}
