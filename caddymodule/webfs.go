package caddymodule

import (
	"errors"
	"io/fs"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/kezchat/kez/web"
)

func init() {
	caddy.RegisterModule(WebFS{})
}

// WebFS is the filesystem module caddy.fs.kez_web: the KEZ chat web client,
// embedded in the binary, for Caddy's own file_server. It has no options.
//
//	{
//		filesystem kezweb kez_web
//	}
//	chat.example.com {
//		kez_chat {
//			server chat.example.com
//		}
//		file_server {
//			fs kezweb
//			root .
//		}
//	}
//
// The client uses relative asset URLs, so it can also be mounted under a
// sub-path with handle_path; it then talks to the API at /v1 on the same host.
//
// `root .` keeps a site-wide `root` directive (normal on a site that also
// serves its own files) from being applied to the embedded files: without
// it, file_server asks for /srv/www/index.html and answers an empty 404.
// When that happens the module logs a warning that says so.
type WebFS struct {
	log    *slog.Logger
	warned *atomic.Bool // one warning per config
}

// Provision gets the logger for the warning about a site root.
func (w *WebFS) Provision(ctx caddy.Context) error {
	w.log, w.warned = ctx.Slogger(), new(atomic.Bool)
	return nil
}

// CaddyModule returns the Caddy module information.
func (WebFS) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.fs.kez_web",
		New: func() caddy.Module { return new(WebFS) },
	}
}

// Open implements fs.FS.
func (w WebFS) Open(name string) (fs.File, error) {
	f, err := web.FS().Open(name)
	w.check(name, err)
	return f, err
}

// Stat implements fs.StatFS.
func (w WebFS) Stat(name string) (fs.FileInfo, error) {
	info, err := fs.Stat(web.FS(), name)
	w.check(name, err)
	return info, err
}

// check warns, once, when a missing name looks like a site root joined to
// a path of the client: an absolute name (file_server joined an absolute
// root; an fs.FS name never starts with "/"), or one whose tail names a
// file of the client.
func (w WebFS) check(name string, err error) {
	if err == nil || !errors.Is(err, fs.ErrNotExist) || w.log == nil || w.warned.Load() {
		return
	}
	rooted := strings.HasPrefix(name, "/")
	for rest := name; !rooted; {
		_, after, ok := strings.Cut(rest, "/")
		if !ok {
			break
		}
		rest = after
		_, err := fs.Stat(web.FS(), rest)
		rooted = err == nil
	}
	if rooted && w.warned.CompareAndSwap(false, true) {
		w.log.Warn("kez_web: file_server looked for the web client's files under the site's root, so they are not found (404): "+
			"`root` applies to every file_server, also one serving the kez_web filesystem. Add `root .` inside that file_server block: file_server { fs <name>; root . }",
			"name", name)
	}
}

// ReadFile implements fs.ReadFileFS.
func (WebFS) ReadFile(name string) ([]byte, error) { return fs.ReadFile(web.FS(), name) }

// ReadDir implements fs.ReadDirFS.
func (WebFS) ReadDir(name string) ([]fs.DirEntry, error) { return fs.ReadDir(web.FS(), name) }

// UnmarshalCaddyfile sets up the module from Caddyfile tokens. The global
// option `filesystem <name> kez_web` takes no arguments and no block.
func (*WebFS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("kez_web takes no options, got %q", d.Val())
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner     = (*WebFS)(nil)
	_ fs.StatFS             = WebFS{}
	_ fs.ReadFileFS         = WebFS{}
	_ fs.ReadDirFS          = WebFS{}
	_ caddyfile.Unmarshaler = (*WebFS)(nil)
)
