package push

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// vapidKey is the server's VAPID key pair (RFC 8292), base64url as
// webpush-go and browsers take them.
type vapidKey struct {
	private, public string // the P-256 scalar; the uncompressed point (65 bytes)
	topicKey        []byte // keys the Topic header's HMAC
}

// NewVAPIDKey makes a fresh private key: the P-256 scalar to store.
func NewVAPIDKey() ([]byte, error) {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return k.Bytes(), nil
}

func parseVAPIDKey(scalar []byte) (*vapidKey, error) {
	k, err := ecdh.P256().NewPrivateKey(scalar)
	if err != nil {
		return nil, fmt.Errorf("push: the stored VAPID key is not a P-256 private key: %w", err)
	}
	mac := hmac.New(sha256.New, scalar)
	mac.Write([]byte("kez-push-topic"))
	return &vapidKey{
		private:  base64.RawURLEncoding.EncodeToString(scalar),
		public:   base64.RawURLEncoding.EncodeToString(k.PublicKey().Bytes()),
		topicKey: mac.Sum(nil),
	}, nil
}

// topic is the Topic header (RFC 8030 §5.4) of handle's pushes: the push
// service keeps only the latest undelivered push of one topic per device.
// It is a keyed hash, so the push service cannot tell the handle.
func (k *vapidKey) topic(handle string) string {
	mac := hmac.New(sha256.New, k.topicKey)
	mac.Write([]byte(handle))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:16])
}
