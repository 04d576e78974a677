package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/kez"
)

// trustDir holds one file per server URL: what this config has learned
// about that server's binding log and its users' keys (client.TrustState),
// next to a lock file that serialises the kez processes sharing it.
//
//	trust/http_127.0.0.1_8080.json
//	trust/http_127.0.0.1_8080.lock
const trustDir = "trust"

// fileTrust is a client.TrustStore in one JSON file.
type fileTrust struct {
	dir, name string
}

func newFileTrust(configDir, serverURL string) *fileTrust {
	return &fileTrust{dir: filepath.Join(configDir, trustDir), name: trustFileName(serverURL)}
}

// trustFileName makes a file name of a server URL: every byte that is not
// a letter, a digit, '.' or '-' becomes '_'.
func trustFileName(serverURL string) string {
	var b strings.Builder
	for i := 0; i < len(serverURL); i++ {
		c := serverURL[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
	}
	name := strings.Trim(strings.ReplaceAll(b.String(), "___", "_"), "_")
	if len(name) > 120 {
		name = name[:120]
	}
	return name
}

func (f *fileTrust) path() string { return filepath.Join(f.dir, f.name+".json") }

func (f *fileTrust) Load() (*client.TrustState, error) {
	data, err := os.ReadFile(f.path())
	if errors.Is(err, fs.ErrNotExist) {
		data = nil
	} else if err != nil {
		return nil, err
	}
	st := &client.TrustState{}
	if len(data) > 0 {
		if err := json.Unmarshal(data, st); err != nil {
			return nil, fmt.Errorf("%s is damaged: %v", f.path(), err)
		}
	}
	if st.Bindings == nil {
		st.Bindings = map[string]client.Binding{}
	}
	if st.Contacts == nil {
		st.Contacts = map[string]*client.Pin{}
	}
	return st, nil
}

// Update reads, changes and writes the file under an exclusive lock, so
// that kez listen and kez send of one user do not undo each other's
// changes.
func (f *fileTrust) Update(fn func(*client.TrustState) error) error {
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return err
	}
	unlock, err := lockFile(filepath.Join(f.dir, f.name+".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	st, err := f.Load()
	if err != nil {
		return err
	}
	if err := fn(st); errors.Is(err, client.ErrNoChange) {
		return nil
	} else if err != nil {
		return err
	}
	data, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return err
	}
	return writeFileAtomic(f.dir, f.name+".json", append(data, '\n'), 0o600)
}

// oldKeysFile keeps the keys replaced by kez rotate, to open messages
// sealed to them before the rotation, until kez rotate --forget-old.
const oldKeysFile = "old-keys.json"

// nextKeyFile is the key a rotation moves to, written before the server is
// asked, so that a rotation whose answer was lost is finished by the next
// kez rotate with the same key.
const nextKeyFile = "key.next.json"

type oldKeysJSON struct {
	Keys []keyFileJSON `json:"keys"`
}

func loadOldKeys(dir string) ([]*kez.Keys, error) {
	var f oldKeysJSON
	if err := readJSON(dir, oldKeysFile, &f); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []*kez.Keys
	for _, k := range f.Keys {
		seed, err := hex.DecodeString(k.Seed)
		if err != nil || len(seed) != 32 {
			return nil, fmt.Errorf("%s is damaged", filepath.Join(dir, oldKeysFile))
		}
		keys, err := kez.NewKeys(seed)
		if err != nil {
			return nil, err
		}
		out = append(out, keys)
	}
	return out, nil
}

func saveOldKeys(dir string, keys []*kez.Keys) error {
	var f oldKeysJSON
	for _, k := range keys {
		f.Keys = append(f.Keys, keyFileJSON{Seed: hex.EncodeToString(k.Seed()), Primary: k.Primary()})
	}
	data, _ := json.MarshalIndent(f, "", "  ")
	return writeFileAtomic(dir, oldKeysFile, append(data, '\n'), 0o600)
}
