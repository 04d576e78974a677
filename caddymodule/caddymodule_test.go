package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the caddyfile adapter
	_ "github.com/caddyserver/caddy/v2/modules/standard"          // reverse_proxy etc. for adapt tests

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/storage/bolt"
)

func TestUnmarshalCaddyfileAllOptions(t *testing.T) {
	d := caddyfile.NewTestDispenser(`kez_chat {
		server        kez.lat
		public_url    https://chat.kez.lat
		storage bolt  /var/lib/kez/chat.db
		max_envelope  256KiB
		auth_skew     60s
		register_skew 5m
		keepalive     15s
		retention     30d
		max_inbox     10000
		reserved      alice-admin ops
		reserved      more
		registration  invite /etc/kez/invites
		register_rate 5/1m
		send_rate     off
		max_streams_per_handle 4
		max_streams   100
		sender_rate   10/1s
		request_limit 5
		max_requests  50
		body_timeout  3s
		stream_max_age 30m
		handle_cooldown 48h
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := Handler{
		Server: "kez.lat", PublicURL: "https://chat.kez.lat",
		Storage:     &StorageConfig{Bolt: &BoltConfig{Path: "/var/lib/kez/chat.db"}},
		MaxEnvelope: 256 << 10, AuthSkew: caddy.Duration(time.Minute), RegisterSkew: caddy.Duration(5 * time.Minute),
		Keepalive: caddy.Duration(15 * time.Second), Retention: caddy.Duration(30 * 24 * time.Hour),
		MaxInbox: 10000, Reserved: []string{"alice-admin", "ops", "more"},
		Registration: "invite", InviteFile: "/etc/kez/invites", RegisterRate: "5/1m", SendRate: "off",
		MaxStreamsPerHandle: 4, MaxStreams: 100,
		SenderRate: "10/1s", RequestLimit: 5, MaxRequests: 50,
		BodyTimeout: caddy.Duration(3 * time.Second), StreamMaxAge: caddy.Duration(30 * time.Minute),
		HandleCooldown: caddy.Duration(48 * time.Hour),
	}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("got  %+v\nwant %+v", h, want)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	cases := map[string]string{
		"colour blue":               `unknown kez_chat option "colour"`,
		"server":                    "server needs a value",
		"server a b":                "takes one value",
		"storage":                   "storage needs a backend",
		"storage sqlite /x":         `unknown storage backend "sqlite"`,
		"storage bolt /a /b":        "one path",
		"max_envelope lots":         "max_envelope",
		"max_envelope -5":           "max_envelope",
		"auth_skew soon":            "auth_skew",
		"retention -1h":             "retention",
		"max_inbox 0":               "max_inbox",
		"request_limit 0":           "request_limit",
		"max_requests x":            "max_requests",
		"sender_rate fast":          "sender_rate",
		"body_timeout 0s":           "body_timeout",
		"stream_max_age forever":    "stream_max_age",
		"reserved":                  "reserved needs",
		"server a {\n x\n }":        "takes no block",
		"storage bolt /x {\n y\n }": `unknown storage bolt option "y"`,
		"storage bolt /x {\n one_commit_per_message yes\n }": "takes no value",
		"storage bolt /x {\n max_keys\n }":                   "max_keys takes one number",
		"storage bolt /x {\n max_keys 10\n }":                "at least 1000",
		"storage bolt /x {\n max_keys lots\n }":              "at least 1000",
		// Repeats would silently override: refused like Caddy's own directives do.
		"storage bolt /a\nstorage nats nats://127.0.0.1:4222": "storage already specified",
		"server a\nserver b":            "server already specified",
		"max_inbox 5\nmax_inbox 6":      "max_inbox already specified",
		"send_rate off\nsend_rate 1/1s": "send_rate already specified",
	}
	wantBlockErrors(t, cases)
	for input, want := range map[string]string{"kez_chat extra": "takes no arguments"} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to mention %q", input, err, want)
		}
	}
}

// wantBlockErrors parses each kez_chat block body and wants an error that
// mentions the given text.
func wantBlockErrors(t *testing.T, cases map[string]string) {
	t.Helper()
	for input, want := range cases {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("kez_chat {\n" + input + "\n}"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to mention %q", input, err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, h := range []Handler{
		{},
		{Server: "https://kez.lat"},
		{Server: "Kez.lat"},
		{Server: "kez.lat:443"},
		{Server: "kez.lat", PublicURL: "kez.lat"},
		{Server: "kez.lat", PublicURL: "ftp://kez.lat"},
		{Server: "kez.lat", Reserved: []string{"x"}},
		{Server: "kez.lat", MaxInbox: -1},
		{Server: "kez.lat", Registration: "sometimes"},
		{Server: "kez.lat", Registration: "invite"},
		{Server: "kez.lat", InviteFile: "/x"},
		{Server: "kez.lat", SendRate: "lots"},
		{Server: "kez.lat", MaxStreams: -1},
		{Server: "kez.lat", MaxEnvelope: 16<<20 + 1},
	} {
		if err := h.Validate(); err == nil {
			t.Errorf("%+v validated", h)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"262144": 262144, "256KiB": 262144, "256kib": 262144, "1MiB": 1 << 20, "2KB": 2000, "10B": 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "KiB", "-1", "0", "1.5MiB", "1TiB", "99999999999999MiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

// adapt runs Caddy's own Caddyfile adapter.
func adapt(t *testing.T, caddyfileText string) map[string]any {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	if len(warnings) > 0 {
		t.Logf("warnings: %v", warnings)
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// handlerNames lists the handler module names of a route list, depth first.
func handlerNames(v any) []string {
	var names []string
	switch x := v.(type) {
	case map[string]any:
		if h, ok := x["handler"].(string); ok {
			names = append(names, h)
		}
		for _, k := range []string{"routes", "handle"} {
			if sub, ok := x[k]; ok {
				names = append(names, handlerNames(sub)...)
			}
		}
	case []any:
		for _, e := range x {
			names = append(names, handlerNames(e)...)
		}
	}
	return names
}

func findHandler(v any) map[string]any {
	switch x := v.(type) {
	case map[string]any:
		if x["handler"] == "kez_chat" {
			return x
		}
		for _, e := range x {
			if f := findHandler(e); f != nil {
				return f
			}
		}
	case []any:
		for _, e := range x {
			if f := findHandler(e); f != nil {
				return f
			}
		}
	}
	return nil
}

func TestAdaptRoundTripAndOrder(t *testing.T) {
	cfg := adapt(t, `
chat.example.com {
	reverse_proxy 127.0.0.1:9999
	encode
	kez_chat {
		server chat.example.com
		storage bolt /tmp/kez-test.db
		max_envelope 1MiB
		retention 48h
		reserved ops
		request_limit 2
		stream_max_age 10m
	}
	file_server
}`)
	routes := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv0"].(map[string]any)["routes"]
	names := handlerNames(routes)
	pos := map[string]int{}
	for i, n := range names {
		if _, seen := pos[n]; !seen {
			pos[n] = i
		}
	}
	if !(pos["encode"] < pos["kez_chat"] && pos["kez_chat"] < pos["reverse_proxy"] && pos["kez_chat"] < pos["file_server"]) {
		t.Fatalf("handler order %v: kez_chat must come after encode and before reverse_proxy and file_server", names)
	}
	raw, _ := json.Marshal(findHandler(routes))
	var h Handler
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	want := Handler{Server: "chat.example.com", Storage: &StorageConfig{Bolt: &BoltConfig{Path: "/tmp/kez-test.db"}},
		MaxEnvelope: 1 << 20, Retention: caddy.Duration(48 * time.Hour), Reserved: []string{"ops"},
		RequestLimit: 2, StreamMaxAge: caddy.Duration(10 * time.Minute)}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("round trip: %s\ngot  %+v\nwant %+v", raw, h, want)
	}
	if !strings.Contains(string(raw), `"max_envelope":1048576`) || !strings.Contains(string(raw), `"retention":172800000000000`) {
		t.Fatalf("JSON = %s", raw)
	}
}

// The bolt block's options (max_keys, and the benchmark-only baseline
// switch) adapt to JSON and back.
func TestAdaptOneCommitPerMessage(t *testing.T) {
	cfg := adapt(t, `
localhost {
	kez_chat {
		server localhost
		storage bolt /tmp/kez-bench.db {
			one_commit_per_message
			max_keys 20000
		}
	}
}`)
	routes := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv0"].(map[string]any)["routes"]
	raw, _ := json.Marshal(findHandler(routes))
	if !strings.Contains(string(raw), `"storage":{"bolt":{"max_keys":20000,"one_commit_per_message":true,"path":"/tmp/kez-bench.db"}}`) {
		t.Fatalf("JSON = %s", raw)
	}
	var h Handler
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	if got := h.boltOptions(); !got.OneCommitPerMessage || got.MaxKeys != 20000 {
		t.Fatalf("boltOptions = %+v, want OneCommitPerMessage and MaxKeys 20000", got)
	}
}

func TestAdaptRejectsUnknownOption(t *testing.T) {
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("localhost {\n kez_chat {\n server localhost\n colour blue\n }\n}\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "colour") {
		t.Fatalf("adapt error %v, want it to name the option", err)
	}
}

// runCaddy loads a JSON config into the in-process Caddy (a reload when one
// is already running) with a kez_chat site on port, and returns its base URL.
func runCaddy(t *testing.T, port int, handler map[string]any) string {
	t.Helper()
	handler["handler"] = "kez_chat"
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"kez": map[string]any{
			"listen": []string{fmt.Sprintf("127.0.0.1:%d", port)},
			"routes": []any{map[string]any{"handle": []any{handler, map[string]any{"handler": "static_response", "status_code": 299, "body": "next"}}}},
		}}}},
	}
	raw, _ := json.Marshal(cfg)
	if err := caddy.Load(raw, true); err != nil {
		t.Fatalf("caddy.Load: %v", err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func isolateCaddy(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	t.Cleanup(func() { _ = caddy.Stop() })
}

// pooledDB is the open database the pool holds for path.
func pooledDB(t *testing.T, path string) *bolt.Store {
	t.Helper()
	val, loaded, err := backends.LoadOrNew(path, func() (caddy.Destructor, error) { return nil, errors.New("not pooled") })
	if err != nil || !loaded {
		t.Fatalf("no pooled database for %s: %v", path, err)
	}
	_, _ = backends.Delete(path) // give back the reference just taken
	b := val.(*backend)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.db == nil {
		t.Fatalf("the pooled database for %s is not open", path)
	}
	return b.db
}

// A reload that changes other options shares the open database (bbolt's
// lock would otherwise block it), and the last config's cleanup closes it.
func TestReloadSharesTheDatabase(t *testing.T) {
	isolateCaddy(t)
	path := filepath.Join(t.TempDir(), "chat.db")
	port := testcaddy.FreePort(t)
	storage := map[string]any{"bolt": map[string]any{"path": path}}
	base := runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage})
	if code, body := get(t, base+"/v1/healthz"); code != 200 {
		t.Fatalf("healthz %d %s", code, body)
	}
	if code, body := get(t, base+"/index.html"); code != 299 || body != "next" {
		t.Fatalf("non-API path: %d %s", code, body)
	}
	before := pooledDB(t, path)
	runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage, "max_inbox": 5, "retention": int64(time.Hour)})
	if code, body := get(t, base+"/v1/healthz"); code != 200 {
		t.Fatalf("after reload: %d %s", code, body)
	}
	if after := pooledDB(t, path); after != before {
		t.Fatal("the reload opened the database again instead of sharing it")
	}
	if n, ok := backends.References(path); !ok || n != 1 {
		t.Fatalf("after reload, pool references %d %v", n, ok)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	// The last user is gone: the file is closed and can be opened again.
	s, err := bolt.Open(path, bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("file still locked after stop: %v", err)
	}
	_ = s.Close()
}

// A path that can never work fails provisioning (the operator sees it at
// startup), and Cleanup after a failed Provision is safe.
func TestUnusablePathFailsProvision(t *testing.T) {
	h := &Handler{Server: "kez.test", Storage: &StorageConfig{Bolt: &BoltConfig{Path: "/dev/null/not-a-dir/chat.db"}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Provision = %v", err)
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

// Sites with different server names get different default databases: one
// shared file would merge their handles and inboxes.
func TestDefaultDatabaseIsPerServer(t *testing.T) {
	isolateCaddy(t)
	a, errA := (&Handler{Server: "a.test"}).boltPath()
	b, errB := (&Handler{Server: "b.test"}).boltPath()
	if errA != nil || errB != nil || a == b {
		t.Fatalf("paths %q %q (%v %v)", a, b, errA, errB)
	}
	if want := filepath.Join(caddy.AppDataDir(), "kez", "a.test", "chat.db"); a != want {
		t.Fatalf("default path %q, want %q", a, want)
	}
	explicit, _ := (&Handler{Server: "a.test", Storage: &StorageConfig{Bolt: &BoltConfig{Path: "/srv/kez.db"}}}).boltPath()
	if explicit != "/srv/kez.db" {
		t.Fatalf("explicit path %q", explicit)
	}
}
