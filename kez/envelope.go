package kez

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// EnvelopeInfo is the HKDF info and the first line of the AES-GCM additional
// data of every v1 envelope (SPEC §3).
const EnvelopeInfo = "kez-chat-msg-v1"

// NonceSize is the length of an envelope nonce in bytes.
const NonceSize = 12

// ErrUndecryptable wraps every reason an envelope cannot be opened. A client
// shows such an envelope as undecryptable, never as a message.
var ErrUndecryptable = errors.New("undecryptable envelope")

var b64 = base64.RawURLEncoding.Strict()

// Envelope is the end-to-end encrypted message the server relays untouched.
// Field order matches SPEC §3; Nonce and CT are base64url without padding.
type Envelope struct {
	V     int    `json:"v"`
	From  string `json:"from"`
	To    string `json:"to"`
	Nonce string `json:"nonce"`
	CT    string `json:"ct"`
	Sig   string `json:"sig"`
}

// Keys is one user's identity: the Ed25519 key pair and the X25519 secret
// derived from its seed, computed once.
type Keys struct {
	private ed25519.PrivateKey
	primary string
	x25519  *ecdh.PrivateKey
}

// NewKeys derives everything a client needs from a 32-byte seed.
func NewKeys(seed []byte) (*Keys, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("seed must be %d bytes, not %d", ed25519.SeedSize, len(seed))
	}
	priv := ed25519.NewKeyFromSeed(seed)
	x, err := ecdh.X25519().NewPrivateKey(X25519Secret(seed))
	if err != nil {
		return nil, err
	}
	return &Keys{private: priv, primary: FormatPrimary(priv.Public().(ed25519.PublicKey)), x25519: x}, nil
}

// GenerateKeys makes a new random identity.
func GenerateKeys() *Keys {
	seed := make([]byte, ed25519.SeedSize)
	rand.Read(seed)
	k, err := NewKeys(seed)
	if err != nil {
		panic(err) // unreachable: the seed has the right length
	}
	return k
}

// Seed returns the 32-byte seed, the only secret that needs storing.
func (k *Keys) Seed() []byte { return k.private.Seed() }

// Private returns the Ed25519 private key, for registration and request auth.
func (k *Keys) Private() ed25519.PrivateKey { return k.private }

// Primary returns "ed25519:<hex>", the user's public identity.
func (k *Keys) Primary() string { return k.primary }

// X25519Secret is the sender's X25519 secret: the first 32 bytes of
// SHA-512(seed), clamped as in RFC 7748 — the same scalar Ed25519 uses.
func X25519Secret(seed []byte) []byte {
	h := sha512.Sum512(seed)
	s := h[:32]
	s[0] &= 248
	s[31] &= 127
	s[31] |= 64
	return s
}

// x25519Public converts a primary to the peer's X25519 public key, rejecting
// bad syntax, invalid points and points of small order.
func x25519Public(primary string) (*ecdh.PublicKey, error) {
	// The value is not echoed: it may come from anyone, at any length.
	if !WellFormedPrimary(primary) {
		return nil, errors.New("not a primary (ed25519:<64 lowercase hex>)")
	}
	ed, _ := hex.DecodeString(primary[len(PrimaryPrefix):])
	u, err := EdwardsToMontgomery(ed)
	if err != nil {
		return nil, err
	}
	return ecdh.X25519().NewPublicKey(u)
}

// sharedSecret runs X25519. crypto/ecdh returns an error instead of the
// all-zero output a low-order peer key gives (RFC 7748 §6.1), which SPEC §3
// requires us to reject.
func (k *Keys) sharedSecret(peer *ecdh.PublicKey) ([]byte, error) {
	shared, err := k.x25519.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("x25519: %w", err)
	}
	return shared, nil
}

// A Link seals messages from one sender to one recipient. The X25519 shared
// secret is computed once, so each further message costs only HKDF, AES-GCM
// and one Ed25519 signature. A Link is safe for concurrent use.
type Link struct {
	keys   *Keys
	to     string
	shared []byte
	aad    []byte
}

// LinkTo prepares sealing to the recipient's primary.
func (k *Keys) LinkTo(recipientPrimary string) (*Link, error) {
	pub, err := x25519Public(recipientPrimary)
	if err != nil {
		return nil, err
	}
	shared, err := k.sharedSecret(pub)
	if err != nil {
		return nil, err
	}
	return &Link{keys: k, to: recipientPrimary, shared: shared, aad: envelopeAAD(k.primary, recipientPrimary)}, nil
}

// To is the recipient's primary.
func (l *Link) To() string { return l.to }

// Seal encrypts and signs plaintext under a fresh random nonce.
func (l *Link) Seal(plaintext []byte) (*Envelope, error) {
	var nonce [NonceSize]byte
	rand.Read(nonce[:])
	return l.SealWithNonce(plaintext, nonce[:])
}

// SealWithNonce is Seal with the nonce given. Reusing a nonce breaks
// AES-GCM, so outside tests always use Seal.
func (l *Link) SealWithNonce(plaintext, nonce []byte) (*Envelope, error) {
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("nonce must be %d bytes", NonceSize)
	}
	aead, err := messageCipher(l.shared, nonce)
	if err != nil {
		return nil, err
	}
	env := &Envelope{
		V:     1,
		From:  l.keys.primary,
		To:    l.to,
		Nonce: b64.EncodeToString(nonce),
		CT:    b64.EncodeToString(aead.Seal(nil, nonce, plaintext, l.aad)),
	}
	env.Sig = hex.EncodeToString(ed25519.Sign(l.keys.private, env.SignedBytes()))
	return env, nil
}

// Open checks and decrypts an envelope addressed to k: signature by From, To
// equal to k's primary, then AES-GCM under the derived key. Every failure
// wraps ErrUndecryptable.
func (k *Keys) Open(env *Envelope) ([]byte, error) {
	fail := func(format string, args ...any) ([]byte, error) {
		return nil, fmt.Errorf("%w: %s", ErrUndecryptable, fmt.Sprintf(format, args...))
	}
	if env.V != 1 {
		return fail("version %d is not 1", env.V)
	}
	peer, err := x25519Public(env.From)
	if err != nil {
		return fail("from: %v", err)
	}
	nonce, err := decodeB64url(env.Nonce)
	if err != nil || len(nonce) != NonceSize {
		return fail("nonce is not %d bytes of base64url", NonceSize)
	}
	ct, err := decodeB64url(env.CT)
	if err != nil {
		return fail("ct is not base64url")
	}
	if !WellFormedPrimary(env.To) {
		return fail("to is not a primary")
	}
	if len(env.Sig) != 2*ed25519.SignatureSize || !isLowerHex(env.Sig) {
		return fail("sig is not %d lowercase hex digits", 2*ed25519.SignatureSize)
	}
	sig, _ := hex.DecodeString(env.Sig)
	fromKey, _ := hex.DecodeString(env.From[len(PrimaryPrefix):])
	if !ed25519.Verify(fromKey, env.SignedBytes(), sig) {
		return fail("signature does not verify with the sender's key")
	}
	if env.To != k.primary {
		return fail("addressed to %s, not to this key", env.To)
	}
	shared, err := k.sharedSecret(peer)
	if err != nil {
		return fail("%v", err)
	}
	aead, err := messageCipher(shared, nonce)
	if err != nil {
		return fail("%v", err)
	}
	plaintext, err := aead.Open(nil, nonce, ct, envelopeAAD(env.From, env.To))
	if err != nil {
		return fail("ciphertext does not authenticate")
	}
	return plaintext, nil
}

// decodeB64url decodes strict unpadded base64url. Go's decoder skips CR and
// LF even in strict mode; those would make one envelope open here and not in
// the browser, so they are refused too.
func decodeB64url(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("line breaks in base64url")
	}
	return b64.DecodeString(s)
}

// OpenJSON parses an envelope as relayed by the server and opens it. The
// envelope must have exactly the members of SPEC §3, spelled exactly: a
// case variant or a duplicate would let two clients read two different
// messages from one envelope. The envelope is returned too: its From is the
// proven sender.
func (k *Keys) OpenJSON(raw []byte) (*Envelope, []byte, error) {
	var env Envelope
	if err := decodeExact(raw, map[string]any{"v": &env.V, "from": &env.From, "to": &env.To,
		"nonce": &env.Nonce, "ct": &env.CT, "sig": &env.Sig}); err != nil {
		return nil, nil, fmt.Errorf("%w: not an envelope object: %v", ErrUndecryptable, err)
	}
	plaintext, err := k.Open(&env)
	if err != nil {
		return nil, nil, err
	}
	return &env, plaintext, nil
}

// SignedBytes is the JCS form of {v, from, to, nonce, ct}. It is written by
// hand because it is on every send: keys in JCS order, values copied verbatim.
// That is exact for what Seal produces and what Open accepts (primaries,
// base64url, an integer), none of which JSON escapes.
func (e *Envelope) SignedBytes() []byte {
	b := make([]byte, 0, 48+len(e.CT)+len(e.From)+len(e.Nonce)+len(e.To))
	b = append(b, `{"ct":"`...)
	b = append(b, e.CT...)
	b = append(b, `","from":"`...)
	b = append(b, e.From...)
	b = append(b, `","nonce":"`...)
	b = append(b, e.Nonce...)
	b = append(b, `","to":"`...)
	b = append(b, e.To...)
	b = append(b, `","v":`...)
	b = strconv.AppendInt(b, int64(e.V), 10)
	return append(b, '}')
}

// AppendJSON appends the envelope as JSON without reflection, because the
// sealed fields (primaries, base64url, hex) never need escaping. Anything
// else, say a received envelope with odd values, goes through encoding/json.
func (e *Envelope) AppendJSON(b []byte) []byte {
	fields := [...]struct{ name, value string }{
		{"from", e.From}, {"to", e.To}, {"nonce", e.Nonce}, {"ct", e.CT}, {"sig", e.Sig},
	}
	for _, f := range fields {
		if !plainJSONString(f.value) {
			slow, _ := json.Marshal(e) // cannot fail: strings and an int
			return append(b, slow...)
		}
	}
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(e.V), 10)
	for _, f := range fields {
		b = append(b, `,"`...)
		b = append(b, f.name...)
		b = append(b, `":"`...)
		b = append(b, f.value...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// plainJSONString reports whether s can be written between quotes as is.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			return false
		}
	}
	return true
}

func envelopeAAD(from, to string) []byte {
	return []byte(EnvelopeInfo + "\n" + from + "\n" + to)
}

// MessageKey is HKDF-SHA256(ikm=shared, salt=nonce, info=EnvelopeInfo, L=32).
func MessageKey(shared, nonce []byte) ([]byte, error) {
	return hkdf.Key(sha256.New, shared, nonce, EnvelopeInfo, 32)
}

func messageCipher(shared, nonce []byte) (cipher.AEAD, error) {
	key, err := MessageKey(shared, nonce)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// PlaintextText is the type of a text message.
const PlaintextText = "text"

// Plaintext is what an envelope carries (SPEC §3). Fields are in the order of
// the vectors, so the vector plaintext round-trips byte for byte.
type Plaintext struct {
	FromAddr string `json:"from_addr"`
	ID       string `json:"id"`
	SentAt   int64  `json:"sent_at"` // unix milliseconds
	Text     string `json:"text"`
	Type     string `json:"type"`
}

// NewTextMessage builds a text plaintext with a fresh random id.
func NewTextMessage(fromAddr, text string, sentAtMillis int64) Plaintext {
	var id [12]byte
	rand.Read(id[:])
	return Plaintext{FromAddr: fromAddr, ID: b64.EncodeToString(id[:]), SentAt: sentAtMillis, Text: text, Type: PlaintextText}
}

// Marshal encodes the plaintext as JSON.
func (p Plaintext) Marshal() []byte {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // unreachable: only strings and an integer
	}
	return b
}

// ParsePlaintext decodes a decrypted plaintext with exact member names: a
// text message has exactly type, id, sent_at, text and optionally
// from_addr. Another type needs exactly-named string members type and id
// and no two names equal ignoring case; callers show a type they do not
// know as "unsupported message", never as text.
func ParsePlaintext(b []byte) (Plaintext, error) {
	var p Plaintext
	var typ struct {
		Type, ID string
	}
	folded := map[string]bool{}
	err := ScanStrictObject(b, func(key string, value []byte, _ bool) error {
		f := foldKey(key)
		if folded[f] {
			return fmt.Errorf("two members named %.40q ignoring case", key)
		}
		folded[f] = true
		switch key {
		case "type":
			return json.Unmarshal(value, &typ.Type)
		case "id":
			return json.Unmarshal(value, &typ.ID)
		}
		return nil
	})
	if err != nil {
		return Plaintext{}, fmt.Errorf("plaintext is not a message object: %v", err)
	}
	if typ.ID == "" || typ.Type == "" {
		return Plaintext{}, errors.New("plaintext has no id or type")
	}
	if typ.Type != PlaintextText {
		return Plaintext{ID: typ.ID, Type: typ.Type}, nil
	}
	if err := decodeExact(b, map[string]any{"type": &p.Type, "id": &p.ID, "sent_at": &p.SentAt,
		"text": &p.Text, "from_addr?": &p.FromAddr}); err != nil {
		return Plaintext{}, fmt.Errorf("plaintext is not a text message: %v", err)
	}
	return p, nil
}
