package bolt

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The first Open naming a server records it; another name is refused, the
// same name and no name are accepted.
func TestServerNameIsRecorded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chat.db")
	open := func(server string) error {
		s, err := Open(path, Options{Timeout: time.Second, Server: server})
		if err == nil {
			err = s.Close()
		}
		return err
	}
	if err := open(""); err != nil { // a file made before names were recorded
		t.Fatal(err)
	}
	if err := open("one.test"); err != nil {
		t.Fatal(err)
	}
	err := open("two.test")
	if !errors.Is(err, ErrOtherServer) || !strings.Contains(err.Error(), `"one.test"`) || !strings.Contains(err.Error(), `"two.test"`) {
		t.Fatalf("Open as another server = %v", err)
	}
	for _, name := range []string{"one.test", ""} {
		if err := open(name); err != nil {
			t.Fatalf("Open as %q: %v", name, err)
		}
	}
}
