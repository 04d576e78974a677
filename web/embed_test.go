package web

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

func TestFSHasTheClient(t *testing.T) {
	fsys := FS()
	if err := fstest.TestFS(fsys, "index.html", "app.css", "icon.svg", "js/app.js", "js/kez.js", "js/curve.js", "js/encoding.js", "js/tlog.js", "js/trust.js", "js/safety.js", "js/qr.js", "vendor/qrcode-generator-2.0.4.mjs", "vendor/LICENSE-qrcode-generator.txt"); err != nil {
		t.Fatal(err)
	}
	for _, hidden := range []string{"embed.go", "test", "package.json", "node_modules"} {
		if _, err := fs.Stat(fsys, hidden); err == nil {
			t.Errorf("%s must not be embedded", hidden)
		}
	}
}

func TestModTimeIsUseful(t *testing.T) {
	info, err := fs.Stat(FS(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	// file_server makes no ETag for a time in the first two seconds of 1970.
	if info.ModTime().Year() < 2000 {
		t.Fatalf("ModTime = %v", info.ModTime())
	}
}

// etags lists what file_server's ETag is made of for every file, in its
// format ("<mtime ns, base 36>-<size, base 36>"), read through Stat, Open
// and ReadDir alike.
func etags(t *testing.T) map[string]string {
	t.Helper()
	fsys := FS()
	out := map[string]string{}
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fromEntry, err := d.Info()
		if err != nil {
			return err
		}
		fromStat, err := fs.Stat(fsys, path)
		if err != nil {
			return err
		}
		f, err := fsys.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		fromFile, err := f.Stat()
		if err != nil {
			return err
		}
		tag := func(i fs.FileInfo) string {
			return strconv.FormatInt(i.ModTime().UnixNano(), 36) + "-" + strconv.FormatInt(i.Size(), 36)
		}
		if tag(fromEntry) != tag(fromStat) || tag(fromFile) != tag(fromStat) {
			return fmt.Errorf("%s: ReadDir says %s, Stat %s, Open %s", path, tag(fromEntry), tag(fromStat), tag(fromFile))
		}
		out[path] = tag(fromStat)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestETagsFollowContent: each file's time is the fixed epoch plus a hash of
// its bytes, not the time the process started, so files that differ have
// different ETags and a file's ETag is the same in every instance.
func TestETagsFollowContent(t *testing.T) {
	seen := map[string]string{}
	for path := range etags(t) {
		b, err := fs.ReadFile(FS(), path)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := fs.Stat(FS(), path)
		if got, want := info.ModTime(), modTime(b); !got.Equal(want) || got.Truncate(time.Second) != modEpoch {
			t.Errorf("%s: ModTime = %v, want %v (from its bytes)", path, got, want)
		}
		tag := strconv.FormatInt(info.ModTime().UnixNano(), 36)
		if other, dup := seen[tag]; dup {
			t.Errorf("%s and %s have one time", path, other)
		}
		seen[tag] = path
	}
	if a, b := modTime([]byte("a")), modTime([]byte("b")); a.Equal(b) {
		t.Errorf("two contents, one time %v", a)
	}
}

// TestETagsSameInAnotherInstance starts this test binary again, as a second
// server would start, and compares its ETag data with ours.
func TestETagsSameInAnotherInstance(t *testing.T) {
	if os.Getenv("KEZ_WEB_PRINT_ETAGS") == "1" {
		json.NewEncoder(os.Stdout).Encode(etags(t))
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestETagsSameInAnotherInstance$", "-test.count=1")
	cmd.Env = append(os.Environ(), "KEZ_WEB_PRINT_ETAGS=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("second instance: %v\n%s", err, out)
	}
	var theirs map[string]string
	line, _, _ := strings.Cut(string(out), "\n")
	if err := json.Unmarshal([]byte(line), &theirs); err != nil {
		t.Fatalf("second instance said %q: %v", out, err)
	}
	ours := etags(t)
	if !maps.Equal(ours, theirs) {
		t.Fatalf("ETag data differ between two instances:\nours   %v\ntheirs %v", ours, theirs)
	}
	if len(ours) < 10 {
		t.Fatalf("only %d files", len(ours))
	}
}

func TestFilesSeek(t *testing.T) {
	f, err := FS().Open("index.html")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rs, ok := f.(io.ReadSeeker)
	if !ok {
		t.Fatal("embedded files must be seekable for http.ServeContent")
	}
	if _, err := rs.Seek(0, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rs)
	if !strings.Contains(string(b), "<!doctype html>") {
		t.Fatal("index.html does not look like HTML")
	}
}

// Relative URLs only: the client must work under a sub-path such as /chat/.
func TestNoRootRelativeAssetURLs(t *testing.T) {
	b, err := fs.ReadFile(FS(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`src="/`, `href="/`} {
		if strings.Contains(string(b), bad) {
			t.Errorf("index.html contains %s: asset URLs must be relative", bad)
		}
	}
}
