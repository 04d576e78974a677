package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/gowebpki/jcs"

	"github.com/kezchat/kez/kez"
)

// Rotate moves the user's handle to newKeys (SPEC §2.10): the old and the
// new key both sign the rotation, the server logs it and answers with the
// new record, whose leaf is proven in the log. From then on the client
// signs with newKeys and still opens messages sealed to the old key.
// Contacts who pinned the old key follow the rotation with a notice.
//
// Keep the old key until Rotate has returned: if the answer is lost, the
// same call again (same newKeys) finishes it.
func (c *Client) Rotate(ctx context.Context, newKeys *kez.Keys) (*Record, error) {
	old := c.Keys()
	if old == nil || c.handle == "" || newKeys == nil {
		return nil, ErrNoIdentity
	}
	if newKeys.Primary() == old.Primary() {
		return nil, errors.New("the new key is the current key")
	}
	name, err := c.ServerName(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := c.logVerifier(ctx); err != nil {
		return nil, err
	}
	st, err := c.trust.Load()
	if err != nil {
		return nil, err
	}
	if st.Self == nil || st.Self.Handle != c.handle {
		c.checkSelf(ctx, old.Primary())
	}
	// The new key is the user's before the server logs it, so the monitor
	// never reports the user's own rotation.
	err = c.trust.Update(func(st *TrustState) error {
		if st.Self == nil || st.Self.Handle != c.handle {
			st.Self = &Self{Handle: c.handle, Keys: []string{old.Primary()}, Since: -1}
		}
		if !slices.Contains(st.Self.Keys, newKeys.Primary()) {
			st.Self.Keys = append(st.Self.Keys, newKeys.Primary())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rot, err := kez.SignRotation(old.Private(), newKeys.Private(), c.handle, name, c.now())
	if err != nil {
		return nil, err
	}
	leaf := rot.JCS()
	var rec *Record
	_, err = c.do(ctx, &call{method: http.MethodPost, path: "/v1/rotate", body: leaf, resend: true},
		func(b []byte) (err error) { rec, err = parseRecord(b); return err })
	if err != nil {
		return nil, err
	}
	if err := c.checkRecord(rec, c.handle, newKeys.Primary()); err != nil {
		return nil, err
	}
	if got, err := jcs.Transform(rec.Rotation); err != nil || !bytes.Equal(got, leaf) {
		return nil, &ProtocolError{URL: c.base + "/v1/rotate", Reason: "the record does not carry the rotation that was sent"}
	}
	if err := c.proveRecord(ctx, rec, "your rotation"); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.oldKeys = append(c.oldKeys, old)
	c.keys = newKeys
	c.mu.Unlock()
	return rec, nil
}

// Deletion is the server's receipt of a deletion (SPEC §2.10).
type Deletion struct {
	Handle     string
	LogIndex   int64           // the deletion's leaf
	Checkpoint *kez.Checkpoint // in which its inclusion proof verified
}

// DeleteAccount ends the binding of the user's handle to their key (SPEC
// §2.10): the server deletes the inbox and the contact lists, answers
// lookups of the handle with 404 and holds the handle for its cooldown.
// The deletion is signed by the key and logged; its leaf is proven here.
func (c *Client) DeleteAccount(ctx context.Context) (*Deletion, error) {
	keys := c.Keys()
	if keys == nil || c.handle == "" {
		return nil, ErrNoIdentity
	}
	name, err := c.ServerName(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := c.logVerifier(ctx); err != nil {
		return nil, err
	}
	del, err := kez.SignDeletion(keys.Private(), c.handle, name, c.now())
	if err != nil {
		return nil, err
	}
	leaf := del.JCS()
	var handle, log []byte
	var deleted bool
	_, err = c.do(ctx, &call{method: http.MethodPost, path: "/v1/delete", body: leaf, resend: true},
		func(b []byte) error {
			f, err := members("deletion receipt", b, []string{"handle", "deleted", "log"}, nil)
			if err != nil {
				return err
			}
			handle, log = f["handle"], f["log"]
			deleted, err = jsonBool("deleted", f["deleted"])
			return err
		})
	if err != nil {
		return nil, err
	}
	if h, err := jsonString("handle", handle); err != nil || h != c.handle || !deleted {
		return nil, &ProtocolError{URL: c.base + "/v1/delete", Reason: fmt.Sprintf("the receipt is not the deletion of %s", c.handle)}
	}
	lp, cp, err := c.proveLeaf(ctx, "your deletion", leaf, log)
	if err != nil {
		return nil, err
	}
	err = c.trust.Update(func(st *TrustState) error {
		if st.Self != nil && st.Self.Handle == c.handle {
			st.Self.Deleted = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Deletion{Handle: c.handle, LogIndex: lp.Index, Checkpoint: cp}, nil
}
