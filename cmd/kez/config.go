package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/kezchat/kez/kez"
)

// The config dir holds small JSON files:
//
//	key.json       the seed, the only secret (0600)
//	account.json   which server and handle this key is registered as, and the
//	               server's log key pinned at registration
//	cursor.json    the last seq shown, so listen resumes across restarts, and
//	               which recent messages were shown, so a replay is not
//	trust/*.json   per server: the pinned log key, the largest checkpoint, the
//	               log read so far, contacts' pinned keys, kept warnings
//	old-keys.json  keys replaced by kez rotate (0600), until --forget-old
//	key.next.json  the key a rotation in progress moves to (0600)
const (
	keyFile     = "key.json"
	accountFile = "account.json"
	cursorFile  = "cursor.json"
)

// configDir picks the directory: --config, then $KEZ_CONFIG_DIR, then the
// user's config dir (e.g. ~/.config/kez).
func configDir(flagValue string, getenv func(string) string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if env := getenv("KEZ_CONFIG_DIR"); env != "" {
		return env, nil
	}
	base, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a config directory (%v); pass --config DIR or set KEZ_CONFIG_DIR", err)
	}
	return filepath.Join(base, "kez"), nil
}

type keyFileJSON struct {
	Seed    string `json:"seed"`
	Primary string `json:"primary"`
}

// errNoKey means init has not run for this config dir.
var errNoKey = errors.New("no key yet")

// saveKey writes the seed with owner-only permissions. It does not replace an
// existing key unless force is set: a lost seed is a lost identity.
func saveKey(dir string, keys *kez.Keys, force bool) error {
	path := filepath.Join(dir, keyFile)
	if !force {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("a key already exists in %s; pass --force to replace it (the old identity is lost unless you kept its seed)", path)
		}
	}
	return writeKeyAt(dir, keyFile, keys)
}

// writeKeyAt writes a key file (seed and primary, 0600).
func writeKeyAt(dir, name string, keys *kez.Keys) error {
	data, _ := json.MarshalIndent(keyFileJSON{Seed: hex.EncodeToString(keys.Seed()), Primary: keys.Primary()}, "", "  ")
	return writeFileAtomic(dir, name, append(data, '\n'), 0o600)
}

// loadKey reads and checks the key file: private to its owner, a 32-byte
// seed, and the primary it claims.
func loadKey(dir string) (*kez.Keys, error) {
	path := filepath.Join(dir, keyFile)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s; run: kez init", errNoKey, dir)
	}
	return loadKeyAt(path)
}

// loadKeyAt reads and checks one key file.
func loadKeyAt(path string) (*kez.Keys, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %v", err)
	}
	if runtime.GOOS != "windows" && info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s can be read by other users (mode %04o); fix it with: chmod 600 %s", path, info.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %v", err)
	}
	var f keyFileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("key file %s is not valid JSON: %v", path, err)
	}
	seed, err := hex.DecodeString(f.Seed)
	if err != nil || len(seed) != 32 {
		return nil, fmt.Errorf("key file %s is damaged: seed must be 64 hex digits", path)
	}
	keys, err := kez.NewKeys(seed)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %v", path, err)
	}
	if f.Primary != "" && f.Primary != keys.Primary() {
		return nil, fmt.Errorf("key file %s is damaged: its primary does not match its seed", path)
	}
	return keys, nil
}

// account records where this key is registered.
type account struct {
	Server     string `json:"server"`      // base URL, e.g. http://localhost:8080
	ServerName string `json:"server_name"` // the name in addresses, e.g. localhost
	Handle     string `json:"handle"`
	Primary    string `json:"primary"`
	// RegisteredAt is when the server made the binding: a different one
	// means the server was reset and the binding made anew.
	RegisteredAt int64 `json:"registered_at,omitempty"`
	// LogKey is the server's log verifier key, pinned at registration
	// (SPEC §5). Every checkpoint must be signed by it.
	LogKey string `json:"log_key,omitempty"`
}

func (a *account) address() string { return kez.Address(a.Handle, a.ServerName) }

// errNotRegistered means register has not succeeded for this config dir.
var errNotRegistered = errors.New("not registered yet; run: kez register <handle> --server URL")

func loadAccount(dir string) (*account, error) {
	var a account
	if err := readJSON(dir, accountFile, &a); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errNotRegistered
		}
		return nil, err
	}
	if a.Server == "" || a.Handle == "" || a.ServerName == "" {
		return nil, fmt.Errorf("account file %s is incomplete; run kez register again", filepath.Join(dir, accountFile))
	}
	return &a, nil
}

func saveAccount(dir string, a *account) error {
	data, _ := json.MarshalIndent(a, "", "  ")
	return writeFileAtomic(dir, accountFile, append(data, '\n'), 0o600)
}

// cursor is what this account has been shown: the last seq, so listen
// resumes across restarts, and a digest of the sender and id of recent
// messages with the seq each was first shown at, so that a replayed envelope
// (the same message stored again under a new seq) is shown once, also by a
// later run. It is tied to server, handle and binding time so that
// registering elsewhere, or again on a reset server (whose seqs start over),
// starts from the beginning.
type cursor struct {
	Server       string            `json:"server"`
	Handle       string            `json:"handle"`
	RegisteredAt int64             `json:"registered_at,omitempty"`
	LastSeq      uint64            `json:"last_seq"`
	Shown        map[string]uint64 `json:"shown,omitempty"` // shownKey → seq first shown at
}

// loadCursor reads the cursor of account a; a missing file or one of
// another account gives a fresh cursor.
func loadCursor(dir string, a *account) (*cursor, error) {
	var c cursor
	if err := readJSON(dir, cursorFile, &c); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if c.Server != a.Server || c.Handle != a.Handle || c.RegisteredAt != a.RegisteredAt {
		c = cursor{Server: a.Server, Handle: a.Handle, RegisteredAt: a.RegisteredAt}
	}
	if c.Shown == nil {
		c.Shown = map[string]uint64{}
	}
	return &c, nil
}

func (c *cursor) save(dir string) error {
	data, _ := json.Marshal(c)
	return writeFileAtomic(dir, cursorFile, append(data, '\n'), 0o600)
}

// maxShown bounds the messages a cursor remembers (about 45 bytes each in
// cursor.json); a replay of an older one would be shown again.
const maxShown = 2000

// firstShowing reports whether the message id from the sender primary,
// stored at seq, is to be shown: it was not shown before, or was first shown
// at this same seq (inbox listing again what it listed before). SPEC §3:
// clients de-duplicate by id, here per sender as in the web client.
func (c *cursor) firstShowing(from, id string, seq uint64) bool {
	sum := sha256.Sum256([]byte(from + "|" + id))
	k := hex.EncodeToString(sum[:16])
	if first, ok := c.Shown[k]; ok {
		return first == seq
	}
	c.Shown[k] = seq
	if len(c.Shown) > maxShown+maxShown/4 {
		seqs := slices.Sorted(maps.Values(c.Shown))
		oldestKept := seqs[len(seqs)-maxShown]
		maps.DeleteFunc(c.Shown, func(_ string, s uint64) bool { return s < oldestKept })
	}
	return true
}

func readJSON(dir, name string, v any) error {
	path := filepath.Join(dir, name)
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s is damaged: %v", path, err)
	}
	return nil
}

// writeFileAtomic replaces dir/name with data via a synced temporary file
// and a rename, so a crash leaves either the old file or the new one.
func writeFileAtomic(dir, name string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := tmp.Chmod(perm); err != nil && runtime.GOOS != "windows" {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}
