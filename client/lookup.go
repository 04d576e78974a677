package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/kezchat/kez/kez"
)

// Record is a registered handle (SPEC §2.3).
type Record struct {
	Handle       string          `json:"handle"`
	Server       string          `json:"server"`
	Address      string          `json:"address"`
	Primary      string          `json:"primary"`
	RegisteredAt int64           `json:"registered_at"` // unix seconds
	Registration json.RawMessage `json:"registration"`
}

// Register binds handle to the client's key on this server. Retrying after
// a lost answer is safe: the server answers 200 with the same record.
func (c *Client) Register(ctx context.Context, handle string) (*Record, error) {
	if c.keys == nil {
		return nil, ErrNoIdentity
	}
	name, err := c.ServerName(ctx)
	if err != nil {
		return nil, err
	}
	reg, err := kez.SignRegistration(c.keys.Private(), handle, name, c.now())
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(reg)
	if err != nil {
		return nil, err
	}
	var rec Record
	if err := c.do(ctx, http.MethodPost, "/v1/register", "", body, jsonType, &rec); err != nil {
		return nil, err
	}
	if err := c.checkRecord(&rec, handle, c.keys.Primary()); err != nil {
		return nil, err
	}
	return &rec, nil
}

// Lookup finds "alice" or "alice@server" on this server.
func (c *Client) Lookup(ctx context.Context, who string) (*Record, error) {
	handle, _ := kez.SplitAddress(who)
	return c.getRecord(ctx, "/v1/u/"+url.PathEscape(who), handle, "")
}

// LookupPrimary finds the handle bound to a primary ("ed25519:<hex>").
func (c *Client) LookupPrimary(ctx context.Context, primary string) (*Record, error) {
	return c.getRecord(ctx, "/v1/by-primary/"+url.PathEscape(primary), "", primary)
}

func (c *Client) getRecord(ctx context.Context, path, wantHandle, wantPrimary string) (*Record, error) {
	var rec Record
	if err := c.do(ctx, http.MethodGet, path, "", nil, "", &rec); err != nil {
		return nil, err
	}
	if err := c.checkRecord(&rec, wantHandle, wantPrimary); err != nil {
		return nil, err
	}
	return &rec, nil
}

// checkRecord verifies what a server claims: the record is the one asked
// for, and its registration is signed by its primary for this handle and
// server. A server can refuse to answer, but it cannot invent a binding.
func (c *Client) checkRecord(rec *Record, wantHandle, wantPrimary string) error {
	bad := func(format string, args ...any) error {
		return &ProtocolError{URL: c.base, Reason: fmt.Sprintf("record for %q: ", rec.Handle) + fmt.Sprintf(format, args...)}
	}
	if wantHandle != "" && rec.Handle != wantHandle {
		return bad("asked for %q", wantHandle)
	}
	if wantPrimary != "" && rec.Primary != wantPrimary {
		return bad("asked for primary %s", wantPrimary)
	}
	if rec.Address != kez.Address(rec.Handle, rec.Server) {
		return bad("address %q does not match handle and server", rec.Address)
	}
	var head struct {
		Payload kez.RegisterPayload `json:"payload"`
	}
	if err := json.Unmarshal(rec.Registration, &head); err != nil {
		return bad("registration is not readable: %v", err)
	}
	// The signature is checked as of the registration's own time and for
	// the record's server, so an old record still verifies.
	_, p, err := kez.VerifyRegistration(rec.Registration, kez.RegistrationPolicy{
		Server: rec.Server, Now: time.Unix(head.Payload.TS, 0), Skew: 0,
	})
	if err != nil {
		return bad("registration does not verify: %v", err)
	}
	if p.Handle != rec.Handle || p.Primary != rec.Primary {
		return bad("registration is for %s / %s, not this record", p.Handle, p.Primary)
	}
	return nil
}

// JRD is a WebFinger answer (RFC 7033, SPEC §2.4).
type JRD struct {
	Subject    string            `json:"subject"`
	Aliases    []string          `json:"aliases"`
	Properties map[string]string `json:"properties"`
	Links      []struct {
		Rel  string `json:"rel"`
		Type string `json:"type"`
		Href string `json:"href"`
	} `json:"links"`
}

// PrimaryProperty names the primary in a KEZ WebFinger answer.
const PrimaryProperty = "urn:kez:primary"

// WebFinger asks for acct:<address>; a bare handle gets this server's name.
func (c *Client) WebFinger(ctx context.Context, address string) (*JRD, error) {
	handle, server := kez.SplitAddress(address)
	if server == "" {
		name, err := c.ServerName(ctx)
		if err != nil {
			return nil, err
		}
		server = name
	}
	q := url.Values{"resource": {"acct:" + kez.Address(handle, server)}}
	var jrd JRD
	if err := c.do(ctx, http.MethodGet, "/.well-known/webfinger?"+q.Encode(), "", nil, "", &jrd); err != nil {
		return nil, err
	}
	return &jrd, nil
}
