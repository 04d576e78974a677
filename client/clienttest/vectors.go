package clienttest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/kezchat/kez/internal/vectors"
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
type AuthVector = vectors.Auth

// VectorsV2 is testdata/kez-v2.json.
type VectorsV2 = vectors.V2

// LoadVectorsV2 reads the v2 cross-language vectors.
func LoadVectorsV2(t testing.TB) *VectorsV2 { return vectors.LoadV2(t) }
