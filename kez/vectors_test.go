package kez

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
)

type vectorKey struct {
	Seed, Public, Primary, X25519Secret, X25519Public string
}

type vectors struct {
	Alice, Bob   vectorKey
	Registration struct {
		Body           json.RawMessage
		Now            int64
		Server         string
		SignedBytesJCS string `json:"signed_bytes_jcs"`
	}
	Envelope struct {
		AAD            string
		AESKey         string `json:"aes_key"`
		CiphertextHex  string `json:"ciphertext_hex"`
		Envelope       json.RawMessage
		HKDFInfo       string `json:"hkdf_info"`
		NonceHex       string `json:"nonce_hex"`
		Plaintext      string
		SharedSecret   string `json:"shared_secret"`
		SignedBytesJCS string `json:"signed_bytes_jcs"`
	}
	ConversionExtra []struct {
		Ed25519Public string `json:"ed25519_public"`
		X25519Public  string `json:"x25519_public"`
	} `json:"x25519_conversion_extra"`
	ConversionMustFail []string `json:"x25519_conversion_must_fail"`
}

// loadVectors reads the shared cross-language vectors (SPEC: testdata/kez-v1.json).
func loadVectors(t testing.TB) *vectors {
	t.Helper()
	raw, err := os.ReadFile("../testdata/kez-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (k vectorKey) private(t testing.TB) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(mustHex(t, k.Seed))
}
