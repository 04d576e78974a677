package kez

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// AuthPrefix is the first line of every v2 signed request string (SPEC §2.0).
const AuthPrefix = "kez-auth-v2"

// Request is what a v2 request signature covers (SPEC §2.0): the server it
// is meant for, the method, the routed path, the canonical query and the
// body. A signature over one Request fits no other request, on no other server.
type Request struct {
	Server string // the server's configured name
	Method string // GET, POST, PUT, DELETE
	Path   string // as routed, handle lower-cased: /v1/inbox/alice/stream
	Query  string // canonical: see CanonicalQuery
	Body   []byte // the exact body bytes; nil or empty for none
	// BodyHash, when set, is used instead of hashing Body (the server has
	// already hashed it while reading).
	BodyHash string
}

// BodySHA256 is the lowercase hex SHA-256 of body, "" for an empty body.
func BodySHA256(body []byte) string {
	if len(body) == 0 {
		return ""
	}
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// Message is the string that is signed for r at unix time ts:
// kez-auth-v2\n<server>\n<METHOD>\n<path>\n<query>\n<body_sha256>\n<unix_ts>.
func (r *Request) Message(ts int64) []byte {
	hash := r.BodyHash
	if hash == "" {
		hash = BodySHA256(r.Body)
	}
	b := make([]byte, 0, len(AuthPrefix)+len(r.Server)+len(r.Method)+len(r.Path)+len(r.Query)+len(hash)+32)
	b = append(b, AuthPrefix...)
	for _, part := range [...]string{r.Server, r.Method, r.Path, r.Query, hash} {
		b = append(b, '\n')
		b = append(b, part...)
	}
	b = append(b, '\n')
	return strconv.AppendInt(b, ts, 10)
}

// Sign returns the X-KEZ-Auth value "<ts>:<sig hex>" for r, signed at ts.
// Clients sign every attempt afresh: the server accepts a signature once.
func (r *Request) Sign(priv ed25519.PrivateKey, ts time.Time) string {
	unix := ts.Unix()
	return strconv.FormatInt(unix, 10) + ":" + hex.EncodeToString(ed25519.Sign(priv, r.Message(unix)))
}

// ParseAuth splits "<unix_ts>:<128 lowercase hex>" into its parts.
func ParseAuth(value string) (ts int64, sig []byte, err error) {
	tsPart, sigPart, ok := strings.Cut(value, ":")
	if !ok {
		return 0, nil, Errorf(CodeUnauthorized, "auth must be <unix_ts>:<signature hex>")
	}
	ts, perr := strconv.ParseInt(tsPart, 10, 64)
	if perr != nil || ts <= 0 || strconv.FormatInt(ts, 10) != tsPart {
		return 0, nil, Errorf(CodeUnauthorized, "auth timestamp is not a canonical positive decimal number")
	}
	if len(sigPart) != 2*ed25519.SignatureSize || !isLowerHex(sigPart) {
		return 0, nil, Errorf(CodeUnauthorized, "auth signature must be %d lowercase hex digits", 2*ed25519.SignatureSize)
	}
	sig, _ = hex.DecodeString(sigPart)
	return ts, sig, nil
}

// Verify checks an X-KEZ-Auth value for r: its timestamp within skew of
// now, then the signature by pub under the ZIP-215 rules (AuthVerifier
// says why). It returns the signed message, whose hash is the request's
// single-use key (see OnceKey).
func (r *Request) Verify(pub ed25519.PublicKey, value string, now time.Time, skew time.Duration) (ts int64, msg []byte, err error) {
	return r.verify(func(msg, sig []byte) bool {
		return len(pub) == ed25519.PublicKeySize && voi.VerifyWithOptions(voi.PublicKey(pub), msg, sig, zip215Rules)
	}, value, now, skew)
}

// verify is Verify with the signature check given.
func (r *Request) verify(valid func(msg, sig []byte) bool, value string, now time.Time, skew time.Duration) (ts int64, msg []byte, err error) {
	ts, sig, err := ParseAuth(value)
	if err != nil {
		return 0, nil, err
	}
	if d := abs(ts - now.Unix()); d > int64(skew/time.Second) {
		return 0, nil, Errorf(CodeUnauthorized, "auth timestamp %d is more than %s from the server's clock (%d)", ts, skew, now.Unix())
	}
	msg = r.Message(ts)
	if !valid(msg, sig) {
		return 0, nil, Errorf(CodeUnauthorized, "auth signature does not verify for this key, server and request")
	}
	return ts, msg, nil
}

// OnceKey is the key under which a server remembers a signed request as
// used: the hash of the signed string (Ed25519 is deterministic, so one
// string has one signature; another valid signature of the same string
// would need the private key, which could sign a new string anyway).
func OnceKey(msg []byte) [32]byte { return sha256.Sum256(msg) }

// CanonicalQuery renders parameters as SPEC §2.0's <query>: name=value
// sorted by name, joined by &; "" for none. Values are unsigned decimals.
func CanonicalQuery(params map[string]uint64) string {
	if len(params) == 0 {
		return ""
	}
	names := make([]string, 0, len(params))
	for n := range params {
		names = append(names, n)
	}
	slices.Sort(names)
	var b []byte
	for i, n := range names {
		if i > 0 {
			b = append(b, '&')
		}
		b = append(b, n...)
		b = append(b, '=')
		b = strconv.AppendUint(b, params[n], 10)
	}
	return string(b)
}

// ParseQuery reads a raw query string of the kind every v2 endpoint takes:
// each parameter at most once, named in allowed, with a canonical unsigned
// decimal value below 2^63 (no sign, no leading zeros). "auth" is skipped
// when skipAuth is set (streams); its value is returned. Anything else is a
// bad_request, so that nothing unsigned rides along. It returns the values
// and the canonical <query> string to verify the signature over.
func ParseQuery(raw string, skipAuth bool, allowed ...string) (values map[string]uint64, canonical, auth string, err error) {
	values = map[string]uint64{}
	if raw == "" {
		return values, "", "", nil
	}
	seenAuth := false
	for part := range strings.SplitSeq(raw, "&") {
		name, value, _ := strings.Cut(part, "=")
		name, err1 := url.QueryUnescape(name)
		value, err2 := url.QueryUnescape(value)
		if err1 != nil || err2 != nil {
			return nil, "", "", Errorf(CodeBadRequest, "the query string is not valid URL encoding")
		}
		if name == "auth" && skipAuth {
			if seenAuth {
				return nil, "", "", Errorf(CodeBadRequest, "query parameter auth is repeated")
			}
			seenAuth, auth = true, value
			continue
		}
		if !slices.Contains(allowed, name) {
			if len(allowed) == 0 {
				return nil, "", "", Errorf(CodeBadRequest, "this endpoint takes no query parameters (got %.40q)", name)
			}
			return nil, "", "", Errorf(CodeBadRequest, "unknown query parameter %.40q (this endpoint takes %s)", name, strings.Join(allowed, ", "))
		}
		if _, dup := values[name]; dup {
			return nil, "", "", Errorf(CodeBadRequest, "query parameter %s is repeated", name)
		}
		n, perr := strconv.ParseUint(value, 10, 63)
		if perr != nil || strconv.FormatUint(n, 10) != value {
			return nil, "", "", Errorf(CodeBadRequest, "%s must be a canonical non-negative decimal below 2^63 (no sign, no leading zeros), got %.40q", name, value)
		}
		values[name] = n
	}
	return values, CanonicalQuery(values), auth, nil
}
