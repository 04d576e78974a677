package client

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// MaxReceiptIDs bounds the ids of one receipt; more go in several.
const MaxReceiptIDs = 500

// receiptPlaintext is SPEC §3's {"type":"receipt","id","sent_at","of","state"}.
type receiptPlaintext struct {
	Type   string   `json:"type"`
	ID     string   `json:"id"`
	SentAt int64    `json:"sent_at"`
	Of     []string `json:"of"`
	State  string   `json:"state"`
}

// SendReceipt tells contact to that their messages ids arrived (SPEC §3
// "receipt"): state is "delivered" or "read". It goes only to to's key as
// pinned and current (Recipient refuses a changed key), and only when that
// key is from, the key that sent the messages: a receipt is never sealed
// to a key that did not write.
func (c *Client) SendReceipt(ctx context.Context, to, from, state string, ids []string) error {
	if state != "delivered" && state != "read" {
		return fmt.Errorf("a receipt says delivered or read, not %q", state)
	}
	if len(ids) == 0 || len(ids) > MaxReceiptIDs {
		return fmt.Errorf("a receipt names 1 to %d messages, not %d", MaxReceiptIDs, len(ids))
	}
	r, err := c.Recipient(ctx, to)
	if err != nil {
		return err
	}
	if r.Primary != from {
		return fmt.Errorf("%s's key is no longer the one that wrote", to)
	}
	var id [12]byte
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	pt, err := json.Marshal(receiptPlaintext{Type: "receipt", ID: base64.RawURLEncoding.EncodeToString(id[:]), SentAt: c.now().UnixMilli(), Of: ids, State: state})
	if err != nil {
		return err
	}
	env, err := r.link.Seal(pt)
	if err != nil {
		return err
	}
	_, err = c.Deliver(ctx, &Outgoing{To: r.Address, Envelope: env.AppendJSON(nil)})
	return err
}
