package client

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gowebpki/jcs"
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
	// Log is the record's inclusion proof in the server's binding log
	// (SPEC §5), as served; nil when the server sends none. Not checked yet.
	Log json.RawMessage `json:"log,omitempty"`
	// Rotation is the latest signed rotation (SPEC §2.10) when the current
	// key came by rotation; nil otherwise.
	Rotation json.RawMessage `json:"rotation,omitempty"`

	// LogIndex is the leaf of the record's binding, and Checkpoint the
	// checkpoint (signed by the pinned log key) in which its inclusion
	// proof verified. Every record the client returns has both.
	LogIndex   int64           `json:"-"`
	Checkpoint *kez.Checkpoint `json:"-"`
}

// Register binds handle to the client's key on this server. Retrying after
// a lost answer is safe: the server answers 200 with the same record.
func (c *Client) Register(ctx context.Context, handle string) (*Record, error) {
	keys := c.Keys()
	if keys == nil {
		return nil, ErrNoIdentity
	}
	name, err := c.ServerName(ctx)
	if err != nil {
		return nil, err
	}
	reg, err := kez.SignRegistration(keys.Private(), handle, name, c.now())
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(reg)
	if err != nil {
		return nil, err
	}
	// First contact: the log key is pinned before anything is bound.
	if _, err := c.logVerifier(ctx); err != nil {
		return nil, err
	}
	var rec *Record
	_, err = c.do(ctx, &call{method: http.MethodPost, path: "/v1/register", body: body, resend: true},
		func(b []byte) (err error) { rec, err = parseRecord(b); return err })
	if err != nil {
		return nil, err
	}
	if err := c.checkRecord(rec, handle, keys.Primary()); err != nil {
		return nil, err
	}
	if err := c.proveRecord(ctx, rec, "your registration of "+handle); err != nil {
		return nil, err
	}
	err = c.trust.Update(func(st *TrustState) error {
		if st.Self == nil || st.Self.Handle != rec.Handle || st.Self.Deleted || !slices.Contains(st.Self.Keys, rec.Primary) {
			st.Self = &Self{Handle: rec.Handle, Keys: []string{rec.Primary}, Since: rec.LogIndex}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// proveRecord checks a record's leaf (its rotation, else its registration)
// in the binding log (SPEC §5) and notes where it is.
func (c *Client) proveRecord(ctx context.Context, rec *Record, what string) error {
	leaf, err := recordLeaf(rec)
	if err != nil {
		return &ProtocolError{URL: c.base, Reason: what + ": " + err.Error()}
	}
	lp, cp, err := c.proveLeaf(ctx, what, leaf, rec.Log)
	if err != nil {
		return err
	}
	rec.LogIndex, rec.Checkpoint = lp.Index, cp
	return nil
}

// Lookup finds "alice" or "alice@server": on this server, or for another
// server's user at that server, verified there under its own log key (SPEC
// §8).
func (c *Client) Lookup(ctx context.Context, who string) (*Record, error) {
	rc, handle, err := c.route(ctx, who)
	if err != nil {
		return nil, err
	}
	if rc != c {
		return rc.getRecord(ctx, "/v1/u/"+url.PathEscape(handle), handle, "")
	}
	return c.getRecord(ctx, "/v1/u/"+url.PathEscape(who), handle, "")
}

// LookupPrimary finds the handle bound to a primary ("ed25519:<hex>").
func (c *Client) LookupPrimary(ctx context.Context, primary string) (*Record, error) {
	return c.getRecord(ctx, "/v1/by-primary/"+url.PathEscape(primary), "", primary)
}

// getRecord fetches a record and checks it: signed by its key(s), the
// one asked for, on this server, and its leaf proven in a checkpoint of
// the pinned log that is consistent with every checkpoint seen before.
func (c *Client) getRecord(ctx context.Context, escapedPath, wantHandle, wantPrimary string) (*Record, error) {
	var rec *Record
	_, err := c.do(ctx, &call{method: http.MethodGet, path: escapedPath, escaped: escapedPath},
		func(b []byte) (err error) { rec, err = parseRecord(b); return err })
	if err != nil {
		return nil, err
	}
	if err := c.checkRecord(rec, wantHandle, wantPrimary); err != nil {
		return nil, err
	}
	name, err := c.ServerName(ctx)
	if err != nil {
		return nil, err
	}
	if rec.Server != name {
		return nil, &ProtocolError{URL: c.base, Reason: fmt.Sprintf("record for %q is for server %q, not %q", rec.Handle, rec.Server, name)}
	}
	if err := c.proveRecord(ctx, rec, c.display(rec.Handle)+"'s record (key "+shortKey(rec.Primary)+")"); err != nil {
		return nil, err
	}
	return rec, nil
}

// checkRecord verifies what a server claims: the record is the one asked
// for, and its registration is signed by its primary for this handle and
// server (or, after a rotation, the rotation to its primary is signed by
// both keys). A server can refuse to answer, but it cannot invent a binding.
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
	if p.Handle != rec.Handle {
		return bad("registration is for %s, not this record", p.Handle)
	}
	if len(rec.Rotation) == 0 {
		if p.Primary != rec.Primary {
			return bad("registration is for %s, not this record's primary", p.Primary)
		}
		return nil
	}
	if err := checkRotation(rec); err != nil {
		return bad("rotation: %v", err)
	}
	return nil
}

// checkRotation verifies a record's rotation object (SPEC §2.10): signed by
// both its old and its new key over the JCS form of its payload, for this
// handle and server, to the record's primary. Whether its old key is the
// registered one, or came by earlier rotations, is for the binding log
// (SPEC §5) to show.
func checkRotation(rec *Record) error {
	f, err := kez.ExactMembers(rec.Rotation, []string{"payload", "signatures"}, nil)
	if err != nil {
		return err
	}
	pf, err := kez.ExactMembers(f["payload"], []string{"v", "type", "handle", "server", "old", "new", "ts"}, nil)
	if err != nil {
		return fmt.Errorf("payload: %v", err)
	}
	fields := map[string]string{}
	for _, name := range []string{"type", "handle", "server", "old", "new"} {
		if fields[name], err = jsonString(name, pf[name]); err != nil {
			return err
		}
	}
	switch {
	case string(pf["v"]) != "2" || fields["type"] != "kez.chat.rotate":
		return errors.New(`payload is not {"v":2,"type":"kez.chat.rotate"}`)
	case fields["handle"] != rec.Handle || fields["server"] != rec.Server:
		return fmt.Errorf("it is for %s@%s", fields["handle"], fields["server"])
	case fields["new"] != rec.Primary:
		return fmt.Errorf("it rotates to %s, not to the record's primary", fields["new"])
	}
	if _, err := jsonInt("ts", pf["ts"]); err != nil {
		return err
	}
	signed, err := jcs.Transform(f["payload"])
	if err != nil {
		return err
	}
	sigs, err := kez.ExactMembers(f["signatures"], []string{"old", "new"}, nil)
	if err != nil {
		return fmt.Errorf("signatures: %v", err)
	}
	for _, which := range []string{"old", "new"} {
		s, err := kez.ExactMembers(sigs[which], []string{"alg", "sig"}, nil)
		if err != nil {
			return fmt.Errorf("signatures.%s: %v", which, err)
		}
		alg, err1 := jsonString("alg", s["alg"])
		sigHex, err2 := jsonString("sig", s["sig"])
		pub, err3 := kez.ParsePrimary(fields[which])
		sig, err4 := hex.DecodeString(sigHex)
		if err := firstError(err1, err2, err3, err4); err != nil {
			return fmt.Errorf("signatures.%s: %v", which, err)
		}
		if alg != "ed25519" || sigHex != strings.ToLower(sigHex) || !ed25519.Verify(pub, signed, sig) {
			return fmt.Errorf("signatures.%s does not verify", which)
		}
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
	_, err := c.do(ctx, &call{method: http.MethodGet, path: "/.well-known/webfinger", rawQuery: q.Encode()},
		func(b []byte) error { return json.Unmarshal(b, &jrd) })
	if err != nil {
		return nil, err
	}
	return &jrd, nil
}
