// Package vectors reads the cross-language test vectors of
// testdata/kez-v2.json once, in one shape, for every package's tests: the
// Go server, the Go client and the storage backends reproduce the same
// values (the browser client reads the same file in its own tests).
package vectors

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Key is one of the vectors' identities.
type Key struct {
	Seed    string `json:"seed"`
	Public  string `json:"public"`
	Primary string `json:"primary"`
}

// Auth is one v2 request signature (SPEC §2.0).
type Auth struct {
	Signer      string `json:"signer"`
	Method      string `json:"method"`
	URL         string `json:"url"`
	Path        string `json:"path"`
	Query       string `json:"query"`
	Body        string `json:"body"`
	BodySHA256  string `json:"body_sha256"`
	TS          int64  `json:"ts"`
	Message     string `json:"message"`
	Sig         string `json:"sig"`
	Header      string `json:"header"`
	URLWithAuth string `json:"url_with_auth"`
}

// Change is a signed rotation or deletion and the leaf it makes.
type Change struct {
	Body        json.RawMessage `json:"body"`
	LeafDataJCS string          `json:"leaf_data_jcs"`
	LeafHash    string          `json:"leaf_hash"`
	SignedBytes string          `json:"signed_bytes_jcs"`
	Old         string          `json:"old"`     // rotation
	New         string          `json:"new"`     // rotation
	Primary     string          `json:"primary"` // deletion
	TS          int64           `json:"ts"`
}

// Leaf is one leaf of the vectors' binding log.
type Leaf struct {
	Index      int64  `json:"index"`
	What       string `json:"what"`
	DataJCS    string `json:"data_jcs"`
	DataBase64 string `json:"data_base64"`
	LeafHash   string `json:"leaf_hash"`
}

// Proof is an inclusion proof (Index, TreeSize) or a consistency proof
// (Old, New).
type Proof struct {
	Index    int64    `json:"index"`
	TreeSize int64    `json:"tree_size"`
	Old      int64    `json:"old"`
	New      int64    `json:"new"`
	Proof    []string `json:"proof"`
}

// V2 is testdata/kez-v2.json.
type V2 struct {
	Server     string          `json:"server"`
	Keys       map[string]Key  `json:"keys"`
	Auth       map[string]Auth `json:"auth"`
	Checkpoint struct {
		LogKeySeed  string `json:"log_key_seed"`
		Note        string `json:"note"`
		Origin      string `json:"origin"`
		Root        string `json:"root"`
		SignerKey   string `json:"signer_key"`
		Size        int64  `json:"size"`
		Text        string `json:"text"`
		VerifierKey string `json:"verifier_key"`
	} `json:"checkpoint"`
	Log struct {
		Leaves          []Leaf            `json:"leaves"`
		Roots           map[string]string `json:"roots"`
		Inclusion       []Proof           `json:"inclusion"`
		Consistency     []Proof           `json:"consistency"`
		EntriesResponse json.RawMessage   `json:"entries_response"`
		LookupLogBob    json.RawMessage   `json:"lookup_log_bob"`
	} `json:"log"`
	Rotation Change `json:"rotation"`
	Deletion Change `json:"deletion"`
	Safety   struct {
		Alice        string   `json:"alice"`
		Bob          string   `json:"bob"`
		AliceDigits  string   `json:"alice_digits"`
		BobDigits    string   `json:"bob_digits"`
		Groups       []string `json:"groups"`
		Iterations   int      `json:"iterations"`
		SafetyNumber string   `json:"safety_number"`
	} `json:"safety"`
}

var (
	loadOnce sync.Once
	loaded   []byte
	loadErr  error
)

// LoadV2 reads testdata/kez-v2.json; each call returns a fresh copy, so a
// test may change what it got.
func LoadV2(t testing.TB) *V2 {
	t.Helper()
	loadOnce.Do(func() {
		_, here, _, _ := runtime.Caller(0)
		loaded, loadErr = os.ReadFile(filepath.Join(filepath.Dir(here), "..", "..", "testdata", "kez-v2.json"))
	})
	if loadErr != nil {
		t.Fatal(loadErr)
	}
	var v V2
	if err := json.Unmarshal(loaded, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}
