package caddymodule

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// readmeOptions reads the README's option table (## Configuration
// reference): option name (as the Caddyfile spells it, "storage bolt" for
// the storage rows) → its default and meaning cells.
func readmeOptions(t *testing.T) map[string][2]string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	i := strings.Index(text, "\n## Configuration reference\n")
	if i < 0 {
		t.Fatal("README has no ## Configuration reference")
	}
	text = text[i+1:]
	if j := strings.Index(text[3:], "\n## "); j >= 0 {
		text = text[:j+3]
	}
	unescaped := regexp.MustCompile(`[^\\]\|`)
	rows := map[string][2]string{}
	for line := range strings.SplitSeq(text, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		// Split on the pipes that are not \| inside a cell.
		var cells []string
		for rest := line[1:]; ; {
			loc := unescaped.FindStringIndex(rest)
			if loc == nil {
				break
			}
			cells = append(cells, strings.TrimSpace(rest[:loc[0]+1]))
			rest = rest[loc[1]:]
		}
		if len(cells) != 3 {
			t.Fatalf("table row with %d cells: %s", len(cells), line)
		}
		syntax := strings.Trim(cells[0], "`")
		name, rest, _ := strings.Cut(syntax, " ")
		if name == "storage" {
			backend, _, _ := strings.Cut(rest, " ")
			name += " " + backend
		}
		if _, dup := rows[name]; dup {
			t.Fatalf("README lists %s twice", name)
		}
		rows[name] = [2]string{cells[1], cells[2]}
	}
	return rows
}

// withDefaults is a kez_chat block read from Caddyfile text, with the
// defaults filled in as Provision fills them.
func withDefaults(t *testing.T, block string) Handler {
	t.Helper()
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("kez_chat {\n" + block + "\n}")); err != nil {
		t.Fatalf("%s: %v", block, err)
	}
	if err := h.setDefaults(); err != nil {
		t.Fatal(err)
	}
	return h
}

func asJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// The README's option table states the defaults the module fills in: for
// each option, a block setting it to the README's default reads the same
// as a block leaving it out. Every option is in the table, and every row
// is an option.
func TestReadmeOptionDefaults(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	rows := readmeOptions(t)
	const server = "chat.example.com"
	base := "server " + server
	defaults := withDefaults(t, base)

	known := map[string]bool{"storage bolt": true, "storage nats": true}
	for name := range (&Handler{}).caddyfileOptions() {
		if name != "storage" {
			known[name] = true
		}
	}
	for name := range known {
		if _, ok := rows[name]; !ok {
			t.Errorf("README's option table lacks %s", name)
		}
	}
	for name, row := range rows {
		if !known[name] {
			t.Errorf("README's option table has %s, which is no option", name)
			continue
		}
		def := row[0]
		switch name {
		case "server":
			if def != "required" {
				t.Errorf("server: README default %q, want required", def)
			}
			if err := (&Handler{}).Validate(); err == nil {
				t.Error("a config without server validates")
			}
			continue
		case "reserved", "storage nats", "federation_resolve", "federation_allow_private", "federation_repin", "push_allow_private_endpoints": // no default (nats: checked below; a switch: off)
			if def != "—" {
				t.Errorf("%s: README default %q, want —", name, def)
			}
			continue
		}
		// The default cell is `value`, possibly followed by a gloss: (30 days).
		m := regexp.MustCompile("^`([^`]+)`").FindStringSubmatch(def)
		if m == nil {
			t.Errorf("%s: README default %q is not `value`", name, def)
			continue
		}
		value := strings.ReplaceAll(m[1], "<server>", server)
		value = strings.ReplaceAll(value, "<caddy data dir>", caddy.AppDataDir())
		if name == "storage bolt" {
			name = "storage"
			value = "bolt " + value
		}
		if got := withDefaults(t, base+"\n"+name+" "+value); !reflect.DeepEqual(got, defaults) {
			t.Errorf("%s: README says the default is %s; the module's defaults differ:\n set  %s\n left %s",
				name, m[1], asJSON(got), asJSON(defaults))
		}
	}

	// The NATS block's defaults are in the meaning cell: `replicas <n>` (1–5, default 1; ...).
	nats := rows["storage nats"][1]
	found := map[string]string{}
	for _, m := range regexp.MustCompile("`([a-z_]+) <[^`]*>` \\([^)]*?default `?([^`;:,)]+)").FindAllStringSubmatch(nats, -1) {
		found[m[1]] = m[2]
	}
	const url = "storage nats nats://127.0.0.1:4222"
	natsDefaults := withDefaults(t, base+"\n"+url).Storage.Nats
	for _, opt := range []string{"replicas", "stream", "timeout"} {
		value, ok := found[opt]
		if !ok {
			t.Errorf("README's storage nats row gives no default for %s", opt)
			continue
		}
		got := withDefaults(t, base+"\n"+url+" {\n"+opt+" "+value+"\n}").Storage.Nats
		if !reflect.DeepEqual(got, natsDefaults) {
			t.Errorf("storage nats %s: README says the default is %s; the module's defaults differ:\n set  %s\n left %s",
				opt, value, asJSON(got), asJSON(natsDefaults))
		}
	}
	for _, opt := range []string{"creds", "tls_ca", "replicas", "stream", "timeout"} {
		if !strings.Contains(nats, "`"+opt+" <") {
			t.Errorf("README's storage nats row does not describe %s", opt)
		}
	}
}

// Provision leaves no option unset: the running config shows the values in
// force, and package handlers gets every limit explicitly (there, 0 is off).
func TestSetDefaultsFillsEveryOption(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	h := withDefaults(t, "server chat.example.com")
	v := reflect.ValueOf(h)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		switch {
		case !f.IsExported(), f.Name == "Reserved", f.Name == "InviteFile", f.Name == "PushAllowPrivateEndpoints",
			strings.HasPrefix(f.Name, "Federation") && f.Name != "Federation" && f.Name != "FederationRate" && f.Name != "FederationCache":
			continue
		}
		if v.Field(i).IsZero() {
			t.Errorf("%s is left unset", f.Name)
		}
	}
	if h.Storage.Bolt == nil || h.Storage.Bolt.Path != defaultBoltPath("chat.example.com") {
		t.Errorf("storage %+v", h.Storage.Bolt)
	}
	n := withDefaults(t, "server chat.example.com\nstorage nats nats://127.0.0.1:4222").Storage
	if n.Bolt != nil || n.Nats.Replicas == 0 || n.Nats.Stream == "" || n.Nats.Timeout == 0 {
		t.Errorf("nats defaults %+v, bolt %+v", n.Nats, n.Bolt)
	}
	// What the user set stays.
	if got := withDefaults(t, "server chat.example.com\nmax_inbox 5\nsend_rate off").MaxInbox; got != 5 {
		t.Errorf("max_inbox 5 became %d", got)
	}
}

// A size above max_envelope's limit says so, in the user's own units.
func TestMaxEnvelopeAboveLimit(t *testing.T) {
	for in, want := range map[string]string{
		"1GiB":             "max_envelope: 1GiB is above the limit of 16MiB",
		"17MiB":            "max_envelope: 17MiB is above the limit of 16MiB",
		"16777217":         "max_envelope: 16777217 is above the limit of 16MiB",
		"9999999999999GiB": "too large",
		"2GB":              "max_envelope: 2GB is above the limit of 16MiB",
		"lots":             "not a size",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("kez_chat {\nmax_envelope " + in + "\n}"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("max_envelope %s: error %v, want it to say %q", in, err, want)
		}
	}
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("kez_chat {\nmax_envelope 16MiB\n}")); err != nil || h.MaxEnvelope != 16<<20 {
		t.Fatalf("16MiB: %v, %d", err, h.MaxEnvelope)
	}
	for in, want := range map[string]int64{"1GiB": 1 << 30, "1gb": 1e9} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}
