package caddymodule

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/push"
)

func TestPushCaddyfile(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`kez_chat {
		server kez.lat
		push on
		push_contact mailto:ops@kez.lat
		push_interval 10s
		push_allow_private_endpoints
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Handler{Server: "kez.lat", Push: "on", PushContact: "mailto:ops@kez.lat",
		PushInterval: caddy.Duration(10 * time.Second), PushAllowPrivateEndpoints: true}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("got %+v", h)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	for input, msg := range map[string]string{
		"push maybe":                       `push takes on or off, not "maybe"`,
		"push":                             "push needs a value",
		"push on off":                      "takes one value",
		"push_contact ops@kez.lat":         "must be a mailto: address or an https: URL",
		"push_contact http://kez.lat/ops":  "must be a mailto: address or an https: URL",
		"push_contact mailto:nobody":       "must be a mailto: address",
		"push_interval 0s":                 "push_interval",
		"push_interval soon":               "push_interval",
		"push_allow_private_endpoints yes": "takes no value",
		"push off\npush on":                "push already specified",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("kez_chat {\n" + input + "\n}"))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: error %v, want it to mention %q", input, err, msg)
		}
	}
	for _, bad := range []Handler{
		{Server: "kez.lat", Push: "sometimes"},
		{Server: "kez.lat", PushContact: "ops"},
		{Server: "kez.lat", PushInterval: -1},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

func TestPushDefaults(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	h := withDefaults(t, "server chat.example.com")
	if h.Push != "on" || h.PushContact != "mailto:postmaster@chat.example.com" || time.Duration(h.PushInterval) != 5*time.Second || h.PushAllowPrivateEndpoints {
		t.Fatalf("push defaults %q %q %v %v", h.Push, h.PushContact, h.PushInterval, h.PushAllowPrivateEndpoints)
	}
}

func TestPushAdaptRoundTrip(t *testing.T) {
	cfg := adapt(t, `
chat.example.com {
	kez_chat {
		server chat.example.com
		push off
		push_contact https://chat.example.com/ops
		push_interval 2s
		push_allow_private_endpoints
	}
}`)
	raw, _ := json.Marshal(findHandler(cfg))
	for _, s := range []string{`"push":"off"`, `"push_contact":"https://chat.example.com/ops"`, `"push_interval":2000000000`, `"push_allow_private_endpoints":true`} {
		if !strings.Contains(string(raw), s) {
			t.Fatalf("JSON %s lacks %s", raw, s)
		}
	}
	var h Handler
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	want := Handler{Server: "chat.example.com", Push: "off", PushContact: "https://chat.example.com/ops",
		PushInterval: caddy.Duration(2 * time.Second), PushAllowPrivateEndpoints: true}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("round trip: got %+v", h)
	}
}

// In a running Caddy, push on serves the key (kept across a reload:
// browsers subscribed with it); push off makes the push paths unknown.
func TestPushOnOffInCaddy(t *testing.T) {
	isolateCaddy(t)
	port := testcaddy.FreePort(t)
	storage := map[string]any{"bolt": map[string]any{"path": filepath.Join(t.TempDir(), "chat.db")}}
	base := runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage})
	code, key := get(t, base+"/v1/push/key")
	if code != 200 || !strings.HasPrefix(key, `{"key":"B`) {
		t.Fatalf("push key: %d %s", code, key)
	}
	before := theSender(t)
	runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage, "push_interval": int64(time.Second)})
	if code, again := get(t, base+"/v1/push/key"); code != 200 || again != key {
		t.Fatalf("after a reload: %d %s, was %s", code, again, key)
	}
	if after := theSender(t); after != before {
		t.Fatal("a reload made a new push sender: pushes it had planned are lost")
	}
	runCaddy(t, port, map[string]any{"server": "kez.test", "storage": storage, "push": "off"})
	if code, body := get(t, base+"/v1/push/key"); code != 404 || !strings.Contains(body, `"not_found"`) {
		t.Fatalf("push off: %d %s", code, body)
	}
	if n := senderCount(); n != 0 {
		t.Fatalf("%d push senders still pooled with push off", n)
	}
}

// theSender is the one push sender in the pool.
func theSender(t *testing.T) *push.Sender {
	t.Helper()
	var found []*push.Sender
	pushSenders.Range(func(_, v any) bool {
		found = append(found, v.(pooledSender).Sender)
		return true
	})
	if len(found) != 1 {
		t.Fatalf("%d push senders pooled, want 1", len(found))
	}
	return found[0]
}

func senderCount() int {
	n := 0
	pushSenders.Range(func(_, _ any) bool { n++; return true })
	return n
}
