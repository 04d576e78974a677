package caddymodule

import (
	"io/fs"

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
//		}
//	}
//
// The client uses relative asset URLs, so it can also be mounted under a
// sub-path with handle_path; it then talks to the API at /v1 on the same host.
type WebFS struct{}

// CaddyModule returns the Caddy module information.
func (WebFS) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.fs.kez_web",
		New: func() caddy.Module { return new(WebFS) },
	}
}

// Open implements fs.FS.
func (WebFS) Open(name string) (fs.File, error) { return web.FS().Open(name) }

// Stat implements fs.StatFS.
func (WebFS) Stat(name string) (fs.FileInfo, error) { return fs.Stat(web.FS(), name) }

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
	_ fs.StatFS             = WebFS{}
	_ fs.ReadFileFS         = WebFS{}
	_ fs.ReadDirFS          = WebFS{}
	_ caddyfile.Unmarshaler = (*WebFS)(nil)
)
