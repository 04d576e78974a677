package caddymodule

import (
	"io/fs"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestWebFSServesTheClient(t *testing.T) {
	var fsys fs.FS = WebFS{}
	info, err := fs.Stat(fsys, "index.html")
	if err != nil || info.Size() == 0 {
		t.Fatalf("index.html: %v, %v", info, err)
	}
	if _, err := fs.Stat(fsys, "."); err != nil {
		t.Fatalf("root: %v", err)
	}
	if _, err := fsys.Open("nope.txt"); err == nil {
		t.Fatal("a missing file opened")
	}
}

func TestWebFSCaddyfile(t *testing.T) {
	var w WebFS
	if err := w.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`kez_web`)); err != nil {
		t.Fatalf("bare kez_web: %v", err)
	}
	for _, bad := range []string{"kez_web extra", "kez_web {\n\tfoo bar\n}"} {
		if err := w.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q parsed without error", bad)
		}
	}
}
