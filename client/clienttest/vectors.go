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
