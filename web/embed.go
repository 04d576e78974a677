// Package web holds the KEZ chat browser client: plain ES modules, HTML and
// CSS, embedded into the binary and served by Caddy's file_server through the
// caddy.fs.kez_web filesystem module (see caddymodule). Nothing is built:
// what is in this folder is what the browser gets. Tests and dev tooling
// (test/, package.json, node_modules) are not embedded.
package web

import (
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"io"
	"io/fs"
	"sync"
	"time"
)

//go:embed index.html app.css icon.svg icon-maskable.svg manifest.webmanifest sw.js js vendor
var files embed.FS

// modEpoch is the second of every embedded file's modification time.
// Embedded files carry no time of their own, and file_server derives the
// ETag from the time (to the nanosecond) and the size, and Last-Modified
// from the time (to the second). The time must not depend on when or where
// the process runs, or two instances behind one load balancer would give
// one file two ETags; so each file's nanoseconds are a hash of its bytes
// (see modTime), and a new client gets a new ETag on every server at once.
// Last-Modified stays this date: a browser revalidates with If-None-Match,
// which wins over If-Modified-Since (RFC 9110 §13.2.2), but may reuse a
// file without asking for 10% of its apparent age — hence the advice to
// send Cache-Control: no-cache for the client (docs/web-client.md).
var modEpoch = time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)

// modTimes maps each embedded file's path to its modification time.
var modTimes = sync.OnceValue(func() map[string]time.Time {
	times := map[string]time.Time{}
	err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(path)
		if err != nil {
			return err
		}
		times[path] = modTime(b)
		return nil
	})
	if err != nil {
		panic("web: reading the embedded files: " + err.Error())
	}
	return times
})

// modTime is modEpoch plus nanoseconds taken from the SHA-256 of b.
func modTime(b []byte) time.Time {
	sum := sha256.Sum256(b)
	return modEpoch.Add(time.Duration(binary.BigEndian.Uint64(sum[:8]) % uint64(time.Second)))
}

// timeOf is the modification time of the file or folder at path.
func timeOf(path string) time.Time {
	if t, ok := modTimes()[path]; ok {
		return t
	}
	return modEpoch // a folder
}

// FS returns the client's files, rooted at the folder with index.html. It
// implements fs.StatFS, fs.ReadFileFS and fs.ReadDirFS.
func FS() fs.FS { return timedFS{files} }

type timedFS struct{ embed.FS }

func (t timedFS) Open(name string) (fs.File, error) {
	f, err := t.FS.Open(name)
	if err != nil {
		return nil, err
	}
	return timedFile{f, name}, nil
}

func (t timedFS) Stat(name string) (fs.FileInfo, error) {
	f, err := t.FS.Open(name)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: unwrap(err)}
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return timedInfo{info, timeOf(name)}, nil
}

func (t timedFS) ReadDir(name string) ([]fs.DirEntry, error) {
	entries, err := t.FS.ReadDir(name)
	for i, e := range entries {
		entries[i] = timedEntry{e, join(name, e.Name())}
	}
	return entries, err
}

func unwrap(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return pe.Err
	}
	return err
}

func join(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

// timedFile keeps what embed's files offer (Seek and ReadAt for ranges,
// ReadDir for folders) and reports the time of its content.
type timedFile struct {
	fs.File
	name string
}

func (f timedFile) Stat() (fs.FileInfo, error) {
	info, err := f.File.Stat()
	if err != nil {
		return nil, err
	}
	return timedInfo{info, timeOf(f.name)}, nil
}

func (f timedFile) Seek(offset int64, whence int) (int64, error) {
	if s, ok := f.File.(io.Seeker); ok {
		return s.Seek(offset, whence)
	}
	return 0, fs.ErrInvalid
}

func (f timedFile) ReadAt(p []byte, off int64) (int, error) {
	if r, ok := f.File.(io.ReaderAt); ok {
		return r.ReadAt(p, off)
	}
	return 0, fs.ErrInvalid
}

func (f timedFile) ReadDir(n int) ([]fs.DirEntry, error) {
	d, ok := f.File.(fs.ReadDirFile)
	if !ok {
		return nil, &fs.PathError{Op: "readdir", Path: ".", Err: fs.ErrInvalid}
	}
	entries, err := d.ReadDir(n)
	for i, e := range entries {
		entries[i] = timedEntry{e, join(f.name, e.Name())}
	}
	return entries, err
}

type timedInfo struct {
	fs.FileInfo
	mod time.Time
}

func (i timedInfo) ModTime() time.Time { return i.mod }

type timedEntry struct {
	fs.DirEntry
	path string
}

func (e timedEntry) Info() (fs.FileInfo, error) {
	info, err := e.DirEntry.Info()
	if err != nil {
		return nil, err
	}
	return timedInfo{info, timeOf(e.path)}, nil
}

var (
	_ fs.StatFS     = timedFS{}
	_ fs.ReadFileFS = timedFS{}
	_ fs.ReadDirFS  = timedFS{}
)
