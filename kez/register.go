package kez

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// RegisterType is the "type" of a registration payload.
const RegisterType = "kez.chat.register"

// Signature is the detached signature of a signed JSON object.
type Signature struct {
	Alg string `json:"alg"`
	Sig string `json:"sig"`
}

// SignedRegistration is the body of POST /v1/register. Payload holds the
// payload exactly as its JCS canonical form, which is what the signature covers.
type SignedRegistration struct {
	Payload   json.RawMessage `json:"payload"`
	Signature Signature       `json:"signature"`
	// Invite is the one-use token an invite-only server asks for. It is
	// not signed and not stored.
	Invite string `json:"invite,omitempty"`
}

// RegisterPayload is the content of a registration.
type RegisterPayload struct {
	V       int    `json:"v"`
	Type    string `json:"type"`
	Handle  string `json:"handle"`
	Server  string `json:"server"`
	Primary string `json:"primary"`
	TS      int64  `json:"ts"`
}

// Verifier checks a signature made by a primary over msg.
type Verifier func(primary string, msg, sig []byte) error

// verifiers dispatches on signature.alg; new suites are added here.
var verifiers = map[string]Verifier{
	"ed25519": verifyEd25519,
}

func verifyEd25519(primary string, msg, sig []byte) error {
	pub, err := ParsePrimary(primary)
	if err != nil {
		return err
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, msg, sig) {
		return Errorf(CodeBadSignature, "signature does not verify against the primary")
	}
	return nil
}

// RegistrationPolicy is what the server checks a registration against.
type RegistrationPolicy struct {
	Server   string          // the configured server name
	Now      time.Time       // the server's clock
	Skew     time.Duration   // allowed |ts - now|
	Reserved map[string]bool // handles nobody may take
}

// VerifyRegistration parses and checks a registration body in the order of
// SPEC §2.2 and returns it with Payload in canonical (JCS) form, ready to store.
// One case returns both the registration and an error: a correctly signed
// body whose timestamp is stale (CodeStaleTimestamp), so that a late retry
// of a binding that already exists can still be answered 200.
func VerifyRegistration(body []byte, pol RegistrationPolicy) (*SignedRegistration, *RegisterPayload, error) {
	if !utf8.Valid(body) {
		return nil, nil, Errorf(CodeBadRequest, "body is not valid UTF-8")
	}
	var reg SignedRegistration
	if err := decodeExact(body, map[string]any{"payload": &reg.Payload, "signature": &reg.Signature, "invite?": &reg.Invite}); err != nil {
		return nil, nil, Errorf(CodeBadRequest, "body is not a registration: %v", err)
	}
	if len(reg.Payload) == 0 || reg.Payload[0] != '{' {
		return nil, nil, Errorf(CodeBadRequest, "payload must be a JSON object")
	}
	var p RegisterPayload
	// v1 names every field; nothing else rides along in a public record.
	if err := decodeExact(reg.Payload, map[string]any{"v": &p.V, "type": &p.Type, "handle": &p.Handle,
		"server": &p.Server, "primary": &p.Primary, "ts": &p.TS}); err != nil {
		return nil, nil, Errorf(CodeBadRequest, "payload must have exactly v, type, handle, server, primary and ts: %v", err)
	}
	if p.V != 1 {
		return nil, nil, Errorf(CodeBadRequest, "payload.v must be 1")
	}
	if p.Type != RegisterType {
		return nil, nil, Errorf(CodeBadRequest, "payload.type must be %q", RegisterType)
	}
	if !ValidHandle(p.Handle) {
		return nil, nil, Errorf(CodeInvalidHandle, "handle %q must be 2-32 characters of a-z, 0-9, _ and -, starting with a letter or digit", p.Handle)
	}
	if pol.Reserved[p.Handle] {
		return nil, nil, Errorf(CodeReservedHandle, "handle %q is reserved", p.Handle)
	}
	if p.Server != pol.Server {
		return nil, nil, Errorf(CodeWrongServer, "payload.server is %q but this server is %q", p.Server, pol.Server)
	}
	// A stale timestamp is reported only after the signature checks out:
	// the caller may still accept a signed retry of a binding that exists.
	var stale error
	if p.TS <= 0 || abs(p.TS-pol.Now.Unix()) > int64(pol.Skew/time.Second) {
		stale = Errorf(CodeStaleTimestamp, "payload.ts is %d, more than %s from the server's clock (%d)", p.TS, pol.Skew, pol.Now.Unix())
	}
	if _, err := ParsePrimary(p.Primary); err != nil {
		if stale != nil {
			return nil, nil, stale
		}
		return nil, nil, err
	}
	canonical, err := jcs.Transform(reg.Payload)
	if err != nil {
		return nil, nil, Errorf(CodeBadRequest, "payload cannot be canonicalized: %v", err)
	}
	verify, ok := verifiers[reg.Signature.Alg]
	if !ok {
		return nil, nil, firstErr(stale, Errorf(CodeUnsupportedAlg, "signature.alg %q is not supported (use \"ed25519\")", reg.Signature.Alg))
	}
	sig, err := hex.DecodeString(reg.Signature.Sig)
	if err != nil || !isLowerHex(reg.Signature.Sig) {
		return nil, nil, firstErr(stale, Errorf(CodeBadSignature, "signature.sig must be lowercase hex"))
	}
	if err := verify(p.Primary, canonical, sig); err != nil {
		return nil, nil, firstErr(stale, err)
	}
	reg.Payload = canonical
	// Signed but stale: the body and the error both go back (see above).
	return &reg, &p, stale
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Stored is the registration as the server keeps and serves it: the
// canonical payload and the signature, without the invite, written by hand
// so that nothing is re-escaped (encoding/json would turn < > & into \u
// escapes, and the record would no longer be the text that was signed).
func (r *SignedRegistration) Stored() []byte {
	b := make([]byte, 0, len(r.Payload)+200)
	b = append(b, `{"payload":`...)
	b = append(b, r.Payload...)
	b = append(b, `,"signature":{"alg":"`...)
	b = append(b, r.Signature.Alg...) // a key of verifiers: plain ASCII
	b = append(b, `","sig":"`...)
	b = append(b, r.Signature.Sig...) // checked lowercase hex
	return append(b, `"}}`...)
}

// SignRegistration builds a signed registration body for a client.
func SignRegistration(priv ed25519.PrivateKey, handle, server string, ts time.Time) (*SignedRegistration, error) {
	p := RegisterPayload{V: 1, Type: RegisterType, Handle: handle, Server: server,
		Primary: FormatPrimary(priv.Public().(ed25519.PublicKey)), TS: ts.Unix()}
	raw, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	canonical, err := jcs.Transform(raw)
	if err != nil {
		return nil, err
	}
	return &SignedRegistration{
		Payload:   canonical,
		Signature: Signature{Alg: "ed25519", Sig: hex.EncodeToString(ed25519.Sign(priv, canonical))},
	}, nil
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// decodeExact reads a JSON object with ExactMembers and decodes each member
// into its target. A name ending in "?" is optional; a *json.RawMessage
// target gets the value as it appears, and a *Signature target is itself
// read exactly (alg, sig).
func decodeExact(data []byte, targets map[string]any) error {
	var required, optional []string
	for name := range targets {
		if n, ok := strings.CutSuffix(name, "?"); ok {
			optional = append(optional, n)
		} else {
			required = append(required, name)
		}
	}
	members, err := ExactMembers(data, required, optional)
	if err != nil {
		return err
	}
	for name, target := range targets {
		value, ok := members[strings.TrimSuffix(name, "?")]
		if !ok {
			continue
		}
		switch t := target.(type) {
		case *json.RawMessage:
			*t = value
		case *Signature:
			err = decodeExact(value, map[string]any{"alg": &t.Alg, "sig": &t.Sig})
		default:
			err = json.Unmarshal(value, target)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", strings.TrimSuffix(name, "?"), err)
		}
	}
	return nil
}
