// Package web holds the KEZ chat browser client: plain ES modules, HTML and
// CSS, embedded into the binary and served by Caddy's file_server through the
// caddy.fs.kez_web filesystem module (see caddymodule). Nothing is built:
// what is in this folder is what the browser gets. Tests and dev tooling
// (test/, package.json, node_modules) are not embedded.
package web

import (
	"embed"
	"io"
	"io/fs"
	"time"
)

//go:embed index.html app.css icon.svg js vendor
var files embed.FS

// loaded is the modification time reported for every embedded file. Embedded
// files carry no time of their own; file_server derives ETag and
// Last-Modified from it, so it changes whenever a new binary starts and
// caches revalidate after an upgrade.
var loaded = time.Now().Truncate(time.Second)

// FS returns the client's files, rooted at the folder with index.html. It
// implements fs.StatFS, fs.ReadFileFS and fs.ReadDirFS.
func FS() fs.FS { return timedFS{files} }

type timedFS struct{ embed.FS }

func (t timedFS) Open(name string) (fs.File, error) {
	f, err := t.FS.Open(name)
	if err != nil {
		return nil, err
	}
	return timedFile{f}, nil
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
	return timedInfo{info}, nil
}

func (t timedFS) ReadDir(name string) ([]fs.DirEntry, error) {
	entries, err := t.FS.ReadDir(name)
	for i, e := range entries {
		entries[i] = timedEntry{e}
	}
	return entries, err
}

func unwrap(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return pe.Err
	}
	return err
}

// timedFile keeps what embed's files offer (Seek and ReadAt for ranges,
// ReadDir for folders) and reports the load time.
type timedFile struct{ fs.File }

func (f timedFile) Stat() (fs.FileInfo, error) {
	info, err := f.File.Stat()
	if err != nil {
		return nil, err
	}
	return timedInfo{info}, nil
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
		entries[i] = timedEntry{e}
	}
	return entries, err
}

type timedInfo struct{ fs.FileInfo }

func (timedInfo) ModTime() time.Time { return loaded }

type timedEntry struct{ fs.DirEntry }

func (e timedEntry) Info() (fs.FileInfo, error) {
	info, err := e.DirEntry.Info()
	if err != nil {
		return nil, err
	}
	return timedInfo{info}, nil
}

var (
	_ fs.StatFS     = timedFS{}
	_ fs.ReadFileFS = timedFS{}
	_ fs.ReadDirFS  = timedFS{}
)
