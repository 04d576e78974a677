package web

import (
	"encoding/json"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The service worker caches every file the client starts with, so that it
// starts offline: each embedded script, style, icon and the manifest is in
// sw.js's SHELL list, and every listed file exists.
func TestServiceWorkerShellIsComplete(t *testing.T) {
	sw, err := fs.ReadFile(FS(), "sw.js")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile(`(?s)const SHELL = \[(.*?)\];`).FindSubmatch(sw)
	if block == nil {
		t.Fatal("sw.js has no SHELL list")
	}
	var listed []string
	for _, m := range regexp.MustCompile(`'([^']+)'`).FindAllSubmatch(block[1], -1) {
		listed = append(listed, string(m[1]))
	}
	err = fs.WalkDir(FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path == "sw.js" || strings.HasSuffix(path, ".txt") || strings.HasSuffix(path, ".md") {
			return err
		}
		if !slices.Contains(listed, path) {
			t.Errorf("sw.js does not cache %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range listed {
		if p == "./" {
			continue
		}
		if _, err := fs.Stat(FS(), p); err != nil {
			t.Errorf("sw.js caches %s, which is not served: %v", p, err)
		}
	}
}

// The manifest makes the client installable: a name, standalone display,
// start and scope inside the client's folder, theme colours and icons that
// are served.
func TestManifest(t *testing.T) {
	raw, err := fs.ReadFile(FS(), "manifest.webmanifest")
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Name            string `json:"name"`
		StartURL        string `json:"start_url"`
		Scope           string `json:"scope"`
		Display         string `json:"display"`
		ThemeColor      string `json:"theme_color"`
		BackgroundColor string `json:"background_color"`
		Icons           []struct{ Src, Purpose string }
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if m.Name == "" || m.ThemeColor == "" || m.BackgroundColor == "" {
		t.Errorf("manifest lacks a name or colours: %s", raw)
	}
	if m.Display != "standalone" || m.StartURL != "./" || m.Scope != "./" {
		t.Errorf("manifest display %q, start_url %q, scope %q", m.Display, m.StartURL, m.Scope)
	}
	purposes := map[string]bool{}
	for _, icon := range m.Icons {
		if _, err := fs.Stat(FS(), icon.Src); err != nil {
			t.Errorf("icon %s is not served", icon.Src)
		}
		purposes[icon.Purpose] = true
	}
	if !purposes["any"] || !purposes["maskable"] {
		t.Errorf("icon purposes %v, want any and maskable", purposes)
	}
	html, _ := fs.ReadFile(FS(), "index.html")
	for _, want := range []string{`<link rel="manifest" href="manifest.webmanifest">`, `media="(prefers-color-scheme: dark)"`, `media="(prefers-color-scheme: light)"`} {
		if !strings.Contains(string(html), want) {
			t.Errorf("index.html lacks %s", want)
		}
	}
}
