// Package pushtest is a push service for tests (RFC 8030's receiving end):
// an HTTP server that holds subscriptions' private keys, checks each
// push's VAPID JWT (RFC 8292) and decrypts it (RFC 8291, aes128gcm),
// recording what arrived. Written for the tests, from the RFCs: no library
// does the receiving side.
package pushtest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kezchat/kez/storage"
)

// Push is one push as received and checked.
type Push struct {
	Device  string // the subscription's name
	Payload []byte // decrypted
	Header  http.Header
	Claims  Claims // of the VAPID JWT
	Key     string // the VAPID public key (k=), base64url
	At      time.Time
	Err     error // why the push was refused (bad JWT, undecryptable)
}

// Claims are a VAPID JWT's claims.
type Claims struct {
	Aud string `json:"aud"`
	Exp int64  `json:"exp"`
	Sub string `json:"sub"`
}

// Behavior is how the service answers one device's pushes.
type Behavior struct {
	Status int           // default 201
	Delay  time.Duration // before answering
	Body   int           // bytes of answer body to send (a huge one)
	Hold   chan struct{} // when set, answer only once it is closed
}

// Service is a running test push service.
type Service struct {
	*httptest.Server

	mu       sync.Mutex
	devices  map[string]*device
	pushes   []Push
	arrived  chan struct{}
	inflight int
	maxIn    int
	written  int // answer body bytes the clients took
}

type device struct {
	priv *ecdh.PrivateKey
	auth []byte
	do   Behavior
}

// New starts a service on loopback; it stops with the test.
func New(t interface{ Cleanup(func()) }) *Service {
	s := &Service{devices: map[string]*device{}, arrived: make(chan struct{}, 1)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// Subscribe makes a device's subscription, as a browser would get it.
func (s *Service) Subscribe(name string, do Behavior) storage.PushSubscription {
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	auth := make([]byte, 16)
	_, _ = rand.Read(auth)
	s.mu.Lock()
	s.devices[name] = &device{priv: priv, auth: auth, do: do}
	s.mu.Unlock()
	b64 := base64.RawURLEncoding.EncodeToString
	return storage.PushSubscription{Endpoint: s.URL + "/push/" + name, P256dh: b64(priv.PublicKey().Bytes()), Auth: b64(auth)}
}

// JSON is sub as a browser's PushSubscription.toJSON().
func JSON(sub storage.PushSubscription) string {
	b, _ := json.Marshal(map[string]any{"endpoint": sub.Endpoint, "expirationTime": nil,
		"keys": map[string]string{"p256dh": sub.P256dh, "auth": sub.Auth}})
	return string(b)
}

// Pushes returns what arrived so far.
func (s *Service) Pushes() []Push {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Push(nil), s.pushes...)
}

// MaxInFlight is the most pushes the service was answering at once.
func (s *Service) MaxInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxIn
}

// Written is how many bytes of answer bodies the service could write.
func (s *Service) Written() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.written
}

// Wait waits until cond holds of the pushes so far, or d passes.
func (s *Service) Wait(d time.Duration, cond func([]Push) bool) ([]Push, bool) {
	deadline := time.After(d)
	for {
		p := s.Pushes()
		if cond(p) {
			return p, true
		}
		select {
		case <-s.arrived:
		case <-deadline:
			return s.Pushes(), false
		}
	}
}

func (s *Service) serve(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutPrefix(r.URL.Path, "/push/")
	s.mu.Lock()
	d := s.devices[name]
	s.inflight++
	s.maxIn = max(s.maxIn, s.inflight)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inflight--
		s.mu.Unlock()
	}()
	if !ok || d == nil || r.Method != http.MethodPost {
		http.Error(w, "no such subscription", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 8192))
	p := Push{Device: name, Header: r.Header.Clone(), At: time.Now()}
	if err == nil {
		p.Claims, p.Key, err = checkVAPID(r.Header.Get("Authorization"), "http://"+r.Host)
	}
	if err == nil {
		p.Payload, err = decrypt(d, body, r.Header.Get("Content-Encoding"))
	}
	p.Err = err
	s.mu.Lock()
	s.pushes = append(s.pushes, p)
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if d.do.Delay > 0 {
		select {
		case <-time.After(d.do.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if d.do.Hold != nil {
		select {
		case <-d.do.Hold:
		case <-r.Context().Done():
			return
		}
	}
	w.WriteHeader(cmpOr(d.do.Status, http.StatusCreated))
	if d.do.Body > 0 {
		chunk := make([]byte, 32<<10)
		for sent := 0; sent < d.do.Body; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			s.mu.Lock()
			s.written += len(chunk)
			s.mu.Unlock()
		}
	}
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// checkVAPID checks "vapid t=<JWT>, k=<key>" (RFC 8292 §3): an ES256 JWT
// signed by k, for audience origin, not expired nor more than 24 h ahead.
func checkVAPID(auth, origin string) (Claims, string, error) {
	var c Claims
	rest, ok := strings.CutPrefix(auth, "vapid ")
	if !ok {
		return c, "", fmt.Errorf("authorization %q is not vapid", auth)
	}
	var token, key string
	for part := range strings.SplitSeq(rest, ",") {
		part = strings.TrimSpace(part)
		if v, ok := strings.CutPrefix(part, "t="); ok {
			token = v
		} else if v, ok := strings.CutPrefix(part, "k="); ok {
			key = v
		}
	}
	pubBytes, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil {
		return c, "", errors.New("k is not base64url")
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pubBytes)
	if err != nil {
		return c, "", fmt.Errorf("k: %w", err)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c, "", errors.New("t is not a JWT")
	}
	var hdr struct{ Typ, Alg string }
	if err := decodeJSON(parts[0], &hdr); err != nil || hdr.Alg != "ES256" {
		return c, "", fmt.Errorf("JWT header %+v, %v", hdr, err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return c, "", errors.New("JWT signature is not 64 bytes")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return c, "", errors.New("JWT signature does not verify with k")
	}
	if err := decodeJSON(parts[1], &c); err != nil {
		return c, "", err
	}
	now := time.Now().Unix()
	if c.Aud != origin || c.Exp <= now || c.Exp > now+24*3600 {
		return c, "", fmt.Errorf("JWT claims %+v: want aud %s, exp within 24 h", c, origin)
	}
	return c, key, nil
}

func decodeJSON(b64 string, v any) error {
	raw, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}

// decrypt undoes RFC 8291 over one RFC 8188 aes128gcm record.
func decrypt(d *device, body []byte, encoding string) ([]byte, error) {
	if encoding != "aes128gcm" {
		return nil, fmt.Errorf("Content-Encoding %q, want aes128gcm", encoding)
	}
	if len(body) < 21 {
		return nil, errors.New("body shorter than its header")
	}
	salt, rs, idlen := body[:16], binary.BigEndian.Uint32(body[16:20]), int(body[20])
	if idlen != 65 || len(body) < 21+idlen+17 || uint32(len(body)-21-idlen) > rs {
		return nil, fmt.Errorf("header: keyid %d bytes, rs %d, body %d bytes: not one record", idlen, rs, len(body))
	}
	asPub, ciphertext := body[21:21+idlen], body[21+idlen:]
	asKey, err := ecdh.P256().NewPublicKey(asPub)
	if err != nil {
		return nil, err
	}
	secret, err := d.priv.ECDH(asKey)
	if err != nil {
		return nil, err
	}
	info := append(append([]byte("WebPush: info\x00"), d.priv.PublicKey().Bytes()...), asPub...)
	ikm, err := hkdf.Key(sha256.New, secret, d.auth, string(info), 32)
	if err != nil {
		return nil, err
	}
	cek, err := hkdf.Key(sha256.New, ikm, salt, "Content-Encoding: aes128gcm\x00", 16)
	if err != nil {
		return nil, err
	}
	nonce, err := hkdf.Key(sha256.New, ikm, salt, "Content-Encoding: nonce\x00", 12)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	plain, err := gcm.Open(nil, nonce, ciphertext, nil)
	if err != nil {
		return nil, fmt.Errorf("decrypting: %w", err)
	}
	// The last record ends in 0x02, then zero padding (RFC 8188 §2).
	end := len(plain) - 1
	for end >= 0 && plain[end] == 0 {
		end--
	}
	if end < 0 || plain[end] != 2 {
		return nil, errors.New("no last-record delimiter")
	}
	return plain[:end], nil
}

// Seq is a push payload's seq after checking it is exactly
// {"handle":handle,"seq":n}.
func Seq(p Push, handle string) (uint64, error) {
	var v struct {
		Handle string `json:"handle"`
		Seq    uint64 `json:"seq"`
	}
	if err := json.Unmarshal(p.Payload, &v); err != nil {
		return 0, err
	}
	if want := `{"handle":"` + handle + `","seq":` + strconv.FormatUint(v.Seq, 10) + `}`; string(p.Payload) != want {
		return 0, fmt.Errorf("payload %s, want exactly %s", p.Payload, want)
	}
	return v.Seq, nil
}
