package kez

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/gowebpki/jcs"
)

// The signed objects that change a binding besides registration (SPEC
// §2.10): a rotation, signed by the old and the new key, and a deletion,
// signed by the key. Each is a leaf of the binding log in its JCS form.
const (
	RotateType = "kez.chat.rotate"
	DeleteType = "kez.chat.delete"
)

// RotatePayload is the content of a rotation.
type RotatePayload struct {
	V      int    `json:"v"`
	Type   string `json:"type"`
	Handle string `json:"handle"`
	Server string `json:"server"`
	Old    string `json:"old"`
	New    string `json:"new"`
	TS     int64  `json:"ts"`
}

// SignedRotation is the body of POST /v1/rotate with Payload in JCS form.
type SignedRotation struct {
	Payload json.RawMessage
	Old     Signature // by Payload.Old
	New     Signature // by Payload.New
}

// DeletePayload is the content of a deletion.
type DeletePayload struct {
	V       int    `json:"v"`
	Type    string `json:"type"`
	Handle  string `json:"handle"`
	Server  string `json:"server"`
	Primary string `json:"primary"`
	TS      int64  `json:"ts"`
}

// SignedDeletion is the body of POST /v1/delete with Payload in JCS form.
type SignedDeletion struct {
	Payload   json.RawMessage
	Signature Signature
}

// JCS is the rotation as the log keeps it:
// {"payload":…,"signatures":{"new":{…},"old":{…}}}, written by hand like
// SignedRegistration.Stored (the parts are canonical already).
func (r *SignedRotation) JCS() []byte {
	b := make([]byte, 0, len(r.Payload)+360)
	b = append(b, `{"payload":`...)
	b = append(b, r.Payload...)
	b = append(b, `,"signatures":{"new":`...)
	b = appendSignature(b, r.New)
	b = append(b, `,"old":`...)
	b = appendSignature(b, r.Old)
	return append(b, `}}`...)
}

// MarshalJSON writes the body of POST /v1/rotate.
func (r *SignedRotation) MarshalJSON() ([]byte, error) { return r.JCS(), nil }

// JCS is the deletion as the log keeps it: {"payload":…,"signature":{…}}.
func (d *SignedDeletion) JCS() []byte {
	b := make([]byte, 0, len(d.Payload)+200)
	b = append(b, `{"payload":`...)
	b = append(b, d.Payload...)
	b = append(b, `,"signature":`...)
	b = appendSignature(b, d.Signature)
	return append(b, '}')
}

// MarshalJSON writes the body of POST /v1/delete.
func (d *SignedDeletion) MarshalJSON() ([]byte, error) { return d.JCS(), nil }

// appendSignature writes {"alg":…,"sig":…}; both are checked ASCII.
func appendSignature(b []byte, s Signature) []byte {
	b = append(b, `{"alg":"`...)
	b = append(b, s.Alg...)
	b = append(b, `","sig":"`...)
	b = append(b, s.Sig...)
	return append(b, `"}`...)
}

func canonicalJSON(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return jcs.Transform(raw)
}

func sign(priv ed25519.PrivateKey, msg []byte) Signature {
	return Signature{Alg: "ed25519", Sig: hex.EncodeToString(ed25519.Sign(priv, msg))}
}

// SignRotation moves handle from the key old to the key new; both sign.
func SignRotation(old, new ed25519.PrivateKey, handle, server string, ts time.Time) (*SignedRotation, error) {
	p := RotatePayload{V: 2, Type: RotateType, Handle: handle, Server: server,
		Old: FormatPrimary(old.Public().(ed25519.PublicKey)), New: FormatPrimary(new.Public().(ed25519.PublicKey)), TS: ts.Unix()}
	c, err := canonicalJSON(p)
	if err != nil {
		return nil, err
	}
	return &SignedRotation{Payload: c, Old: sign(old, c), New: sign(new, c)}, nil
}

// SignDeletion ends handle's binding to key.
func SignDeletion(key ed25519.PrivateKey, handle, server string, ts time.Time) (*SignedDeletion, error) {
	p := DeletePayload{V: 2, Type: DeleteType, Handle: handle, Server: server,
		Primary: FormatPrimary(key.Public().(ed25519.PublicKey)), TS: ts.Unix()}
	c, err := canonicalJSON(p)
	if err != nil {
		return nil, err
	}
	return &SignedDeletion{Payload: c, Signature: sign(key, c)}, nil
}

// ChangePolicy is what a server checks a rotation or deletion against.
// With Server "" the server and time are not checked (a client checking a
// record or a log entry after the fact).
type ChangePolicy struct {
	Server string
	Now    time.Time
	Skew   time.Duration
}

func (pol ChangePolicy) check(handle, server string, ts int64) error {
	if !ValidHandle(handle) {
		return Errorf(CodeInvalidHandle, "handle %.40q must be 2-32 characters of a-z, 0-9, _ and -", handle)
	}
	if pol.Server == "" {
		return nil
	}
	if server != pol.Server {
		return Errorf(CodeWrongServer, "payload.server is %.60q but this server is %q", server, pol.Server)
	}
	if ts <= 0 || abs(ts-pol.Now.Unix()) > int64(pol.Skew/time.Second) {
		return Errorf(CodeStaleTimestamp, "payload.ts is %d, more than %s from the server's clock (%d)", ts, pol.Skew, pol.Now.Unix())
	}
	return nil
}

// verifySignature checks sig by primary over msg, dispatching on its alg.
func verifySignature(primary string, s Signature, msg []byte) error {
	verify, ok := verifiers[s.Alg]
	if !ok {
		return Errorf(CodeUnsupportedAlg, "signature alg %.20q is not supported (use \"ed25519\")", s.Alg)
	}
	sig, err := hex.DecodeString(s.Sig)
	if err != nil || !isLowerHex(s.Sig) {
		return Errorf(CodeBadSignature, "signature must be lowercase hex")
	}
	return verify(primary, msg, sig)
}

// VerifyRotation parses a rotation body with exact member names and checks
// it: v 2 and type, handle, server and time (per pol), both keys valid and
// different, and both signatures over the JCS payload. The result holds
// the payload in JCS form, ready to log.
func VerifyRotation(body []byte, pol ChangePolicy) (*SignedRotation, *RotatePayload, error) {
	var r SignedRotation
	var sigs json.RawMessage
	if err := decodeExact(body, map[string]any{"payload": &r.Payload, "signatures": &sigs}); err != nil {
		return nil, nil, Errorf(CodeBadRequest, "body is not a rotation: %v", err)
	}
	if err := decodeExact(sigs, map[string]any{"old": &r.Old, "new": &r.New}); err != nil {
		return nil, nil, Errorf(CodeBadRequest, "signatures must be {\"old\":{…},\"new\":{…}}: %v", err)
	}
	if len(r.Payload) == 0 || r.Payload[0] != '{' {
		return nil, nil, Errorf(CodeBadRequest, "payload must be a JSON object")
	}
	var p RotatePayload
	if err := decodeExact(r.Payload, map[string]any{"v": &p.V, "type": &p.Type, "handle": &p.Handle,
		"server": &p.Server, "old": &p.Old, "new": &p.New, "ts": &p.TS}); err != nil {
		return nil, nil, Errorf(CodeBadRequest, "payload must have exactly v, type, handle, server, old, new and ts: %v", err)
	}
	if p.V != 2 || p.Type != RotateType {
		return nil, nil, Errorf(CodeBadRequest, "payload must have v 2 and type %q", RotateType)
	}
	if err := pol.check(p.Handle, p.Server, p.TS); err != nil {
		return nil, nil, err
	}
	for _, k := range []string{p.Old, p.New} {
		if _, err := ParsePrimary(k); err != nil {
			return nil, nil, err
		}
	}
	if p.Old == p.New {
		return nil, nil, Errorf(CodeBadRequest, "old and new are the same key")
	}
	c, err := jcs.Transform(r.Payload)
	if err != nil {
		return nil, nil, Errorf(CodeBadRequest, "payload cannot be canonicalized: %v", err)
	}
	if err := verifySignature(p.Old, r.Old, c); err != nil {
		return nil, nil, err
	}
	if err := verifySignature(p.New, r.New, c); err != nil {
		return nil, nil, err
	}
	r.Payload = c
	return &r, &p, nil
}

// VerifyDeletion parses and checks a deletion body like VerifyRotation.
func VerifyDeletion(body []byte, pol ChangePolicy) (*SignedDeletion, *DeletePayload, error) {
	var d SignedDeletion
	if err := decodeExact(body, map[string]any{"payload": &d.Payload, "signature": &d.Signature}); err != nil {
		return nil, nil, Errorf(CodeBadRequest, "body is not a deletion: %v", err)
	}
	if len(d.Payload) == 0 || d.Payload[0] != '{' {
		return nil, nil, Errorf(CodeBadRequest, "payload must be a JSON object")
	}
	var p DeletePayload
	if err := decodeExact(d.Payload, map[string]any{"v": &p.V, "type": &p.Type, "handle": &p.Handle,
		"server": &p.Server, "primary": &p.Primary, "ts": &p.TS}); err != nil {
		return nil, nil, Errorf(CodeBadRequest, "payload must have exactly v, type, handle, server, primary and ts: %v", err)
	}
	if p.V != 2 || p.Type != DeleteType {
		return nil, nil, Errorf(CodeBadRequest, "payload must have v 2 and type %q", DeleteType)
	}
	if err := pol.check(p.Handle, p.Server, p.TS); err != nil {
		return nil, nil, err
	}
	if _, err := ParsePrimary(p.Primary); err != nil {
		return nil, nil, err
	}
	c, err := jcs.Transform(d.Payload)
	if err != nil {
		return nil, nil, Errorf(CodeBadRequest, "payload cannot be canonicalized: %v", err)
	}
	if err := verifySignature(p.Primary, d.Signature, c); err != nil {
		return nil, nil, err
	}
	d.Payload = c
	return &d, &p, nil
}
