package web

import (
	"io"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"
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
	if info.ModTime().Year() < 2000 || !info.ModTime().Equal(loaded) {
		t.Fatalf("ModTime = %v, want the load time %v", info.ModTime(), loaded)
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
