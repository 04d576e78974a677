package caddymodule

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/storage/nats/natstest"
)

func TestUnmarshalCaddyfileNats(t *testing.T) {
	d := caddyfile.NewTestDispenser(`kez_chat {
		server kez.lat
		storage nats nats://a:4222 nats://b:4222 tls://c:4222 {
			creds    /etc/kez/nats.creds
			tls_ca   /etc/kez/ca.pem
			replicas 3
			stream   kezprod
			timeout  2s
		}
		max_inbox 50
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := &StorageConfig{Nats: &NatsConfig{
		URLs:  []string{"nats://a:4222", "nats://b:4222", "tls://c:4222"},
		Creds: "/etc/kez/nats.creds", TLSCA: "/etc/kez/ca.pem", Replicas: 3, Stream: "kezprod",
		Timeout: caddy.Duration(2 * time.Second),
	}}
	if !reflect.DeepEqual(h.Storage, want) || h.MaxInbox != 50 {
		t.Fatalf("got %+v / %+v", h.Storage.Nats, h)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	// A URL alone is enough.
	h = Handler{}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("kez_chat {\nserver kez.lat\nstorage nats nats://127.0.0.1:4222\n}")); err != nil {
		t.Fatal(err)
	}
	if h.Storage.Nats == nil || len(h.Storage.Nats.URLs) != 1 {
		t.Fatalf("got %+v", h.Storage)
	}

	for input, want := range map[string]string{
		"storage nats":                          "at least one server URL",
		"storage nats n://a {\n replicas 7\n}":  "replicas",
		"storage nats n://a {\n replicas\n}":    "replicas needs a value",
		"storage nats n://a {\n stream a.b\n}":  "stream",
		"storage nats n://a {\n timeout -1s\n}": "timeout",
		"storage nats n://a {\n user bob\n}":    `unknown storage nats option "user"`,
		"storage nats n://a {\n creds a b\n}":   "takes one value",
		"storage mysql x":                       "supported: bolt, nats",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("kez_chat {\n" + input + "\n}"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to mention %q", input, err, want)
		}
	}
	for _, s := range []*StorageConfig{
		{Bolt: &BoltConfig{}, Nats: &NatsConfig{URLs: []string{"nats://a"}}},
		{Nats: &NatsConfig{}},
		{Nats: &NatsConfig{URLs: []string{"nats://a,nats://b"}}},
		{Nats: &NatsConfig{URLs: []string{"nats://a"}, Stream: "a b"}},
		{Nats: &NatsConfig{URLs: []string{"nats://a"}, Replicas: 9}},
		{Bolt: &BoltConfig{MaxKeys: 999}}, // the JSON path, past the Caddyfile's check
		{Bolt: &BoltConfig{MaxKeys: -1}},
	} {
		h := Handler{Server: "kez.lat", Storage: s}
		if err := h.Validate(); err == nil {
			t.Errorf("Validate(%+v) passed", s.Nats)
		}
	}
}

func TestAdaptNats(t *testing.T) {
	cfg := adapt(t, `
localhost {
	kez_chat {
		server localhost
		storage nats nats://10.0.0.1:4222 nats://10.0.0.2:4222 {
			replicas 3
			timeout 3s
		}
	}
}`)
	routes := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv0"].(map[string]any)["routes"]
	raw, _ := json.Marshal(findHandler(routes))
	if !strings.Contains(string(raw), `"storage":{"nats":{"replicas":3,"timeout":3000000000,"urls":["nats://10.0.0.1:4222","nats://10.0.0.2:4222"]}}`) {
		t.Fatalf("JSON = %s", raw)
	}
	var h Handler
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	if h.Storage.Nats == nil || h.Storage.Nats.Replicas != 3 {
		t.Fatalf("round trip: %+v", h.Storage)
	}
}

// With NATS storage, a reload shares the connection (and its hub) when the
// connection settings stay, applies larger stream limits, and the last
// config's cleanup closes it.
func TestNatsReloadSharesTheConnection(t *testing.T) {
	isolateCaddy(t)
	c := natstest.Run(t)
	port := testcaddy.FreePort(t)
	storage := map[string]any{"nats": map[string]any{"urls": c.URLs(), "stream": "reload"}}
	base := runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage, "max_inbox": 5, "retention": int64(30 * time.Minute)})
	if code, body := get(t, base+"/v1/healthz"); code != 200 {
		t.Fatalf("healthz %d %s", code, body)
	}
	key := (&NatsConfig{URLs: c.URLs(), Stream: "reload"}).poolKey()
	first, ok := backends.References(key)
	if !ok || first != 1 {
		t.Fatalf("pool references %d %v", first, ok)
	}
	runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage, "max_inbox": 50, "retention": int64(time.Hour)})
	if code, body := get(t, base+"/v1/healthz"); code != 200 {
		t.Fatalf("after reload: %d %s", code, body)
	}
	if n, ok := backends.References(key); !ok || n != 1 {
		t.Fatalf("after reload, pool references %d %v", n, ok)
	}
	val, _, err := backends.LoadOrNew(key, func() (caddy.Destructor, error) { t.Fatal("not pooled"); return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
	b := val.(*natsBackend)
	_, _ = backends.Delete(key)
	cfg := natsInboxConfig(t, b)
	if cfg.maxPerSubject != 50 || cfg.maxAge != time.Hour {
		t.Fatalf("stream limits after reload: %+v", cfg)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, ok := backends.References(key); ok {
		t.Fatal("connection still pooled after stop")
	}
	if !b.db.Conn().IsClosed() {
		t.Fatal("connection open after the last config stopped")
	}
}

type streamLimits struct {
	maxPerSubject int64
	maxAge        time.Duration
}

func natsInboxConfig(t *testing.T, b *natsBackend) streamLimits {
	t.Helper()
	m, err := b.db.Conn().Request("$JS.API.STREAM.INFO."+b.db.InboxStream(), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Config struct {
			MaxMsgsPerSubject int64 `json:"max_msgs_per_subject"`
			MaxAge            int64 `json:"max_age"`
		} `json:"config"`
	}
	if err := json.Unmarshal(m.Data, &info); err != nil {
		t.Fatal(err)
	}
	return streamLimits{info.Config.MaxMsgsPerSubject, time.Duration(info.Config.MaxAge)}
}

// NATS down at start: provisioning is quick, requests get 503 quickly,
// and the server works once NATS is up.
func TestNatsUnreachableAtStart(t *testing.T) {
	isolateCaddy(t)
	ports := testcaddy.FreePorts(t, 2) // NATS's, Caddy's
	natsPort := ports[0]
	storage := map[string]any{"nats": map[string]any{"urls": []string{"nats://127.0.0.1:" + strconv.Itoa(natsPort)}, "timeout": int64(2 * time.Second)}}
	start := time.Now()
	base := runCaddy(t, ports[1], map[string]any{"server": "kez.test", "storage": storage})
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("provision took %s", d)
	}
	start = time.Now()
	if code, body := get(t, base+"/v1/healthz"); code != 503 || !strings.Contains(body, "unavailable") {
		t.Fatalf("healthz without NATS: %d %s", code, body)
	}
	if code, body := get(t, base+"/v1/u/alice"); code != 503 {
		t.Fatalf("lookup without NATS: %d %s", code, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("503s took %s", d)
	}
	natstest.RunOnPort(t, natsPort)
	testwait.For(t, 10*time.Second, "healthz to answer 200 once NATS is up", func() bool {
		code, _ := get(t, base+"/v1/healthz")
		return code == 200
	})
	if code, body := get(t, base+"/v1/u/alice"); code != 404 {
		t.Fatalf("lookup with NATS: %d %s", code, body)
	}
}
