package clienttest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Vectors is the part of testdata/kez-v1.json that client tests use.
type Vectors struct {
	Alice, Bob struct{ Seed, Primary string }
	Envelope   struct {
		Envelope  json.RawMessage // what the browser client produces: alice to bob
		Plaintext string
	}
}

// LoadVectors reads the shared cross-language vectors, wherever the test runs.
func LoadVectors(t testing.TB) *Vectors {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", "..", "testdata", "kez-v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v Vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

// AuthVector is one v2 request signature of testdata/kez-v2.json (SPEC §2.0).
type AuthVector struct {
	Signer, Method, URL, Path, Query, Body string
	TS                                     int64
	Message, Header                        string
}

// VectorsV2 is the part of testdata/kez-v2.json that client tests use.
type VectorsV2 struct {
	Server   string
	Keys     map[string]struct{ Seed, Primary string }
	Auth     map[string]AuthVector
	Rotation struct {
		Body     json.RawMessage
		Old, New string
		TS       int64
	}
}

// LoadVectorsV2 reads the v2 cross-language vectors.
func LoadVectorsV2(t testing.TB) *VectorsV2 {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", "..", "testdata", "kez-v2.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v VectorsV2
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}
