package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/kez"
)

// RFC 8032 TEST 1, alice in testdata/kez-v1.json.
const (
	aliceSeed    = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
	alicePrimary = "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
)

type result struct {
	code           int
	stdout, stderr string
}

// kezRun runs one command line in-process with stdin and a clean environment.
func kezRun(t *testing.T, stdin string, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	a := &app{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, getenv: func(k string) string { return env[k] }}
	code := run(context.Background(), args, a)
	return result{code, out.String(), errOut.String()}
}

func TestConfigDirPrecedence(t *testing.T) {
	env := func(v string) func(string) string { return func(string) string { return v } }
	if d, _ := configDir("/flag", env("/env")); d != "/flag" {
		t.Errorf("flag lost to %s", d)
	}
	if d, _ := configDir("", env("/env")); d != "/env" {
		t.Errorf("env lost to %s", d)
	}
	d, err := configDir("", env(""))
	if base, uerr := os.UserConfigDir(); uerr == nil && (err != nil || d != filepath.Join(base, "kez")) {
		t.Errorf("default = %s, %v", d, err)
	}
}

func TestInitCreatesPrivateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cfg")
	r := kezRun(t, "", map[string]string{"KEZ_CONFIG_DIR": dir}, "init")
	if r.code != 0 || !strings.Contains(r.stdout, "primary: ed25519:") {
		t.Fatalf("init = %+v", r)
	}
	if runtime.GOOS != "windows" {
		for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, keyFile): 0o600} {
			info, err := os.Stat(path)
			if err != nil || info.Mode().Perm() != want {
				t.Errorf("%s mode = %v, want %04o (%v)", path, info.Mode().Perm(), want, err)
			}
		}
	}
	keys, err := loadKey(dir)
	if err != nil || !strings.Contains(r.stdout, keys.Primary()) {
		t.Fatalf("loadKey = %v; printed %q", err, r.stdout)
	}
	// A second init must not destroy the identity.
	if r := kezRun(t, "", nil, "--config", dir, "init"); r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Errorf("second init = %+v", r)
	}
	again, _ := loadKey(dir)
	if again.Primary() != keys.Primary() {
		t.Error("second init replaced the key")
	}
	if r := kezRun(t, "", nil, "init", "--force", "--config", dir); r.code != 0 {
		t.Errorf("init --force = %+v", r)
	}
	if replaced, _ := loadKey(dir); replaced.Primary() == keys.Primary() {
		t.Error("init --force kept the old key")
	}
}

func TestInitImportsSeed(t *testing.T) {
	dir := t.TempDir()
	if r := kezRun(t, "", nil, "init", "--config", dir, "--seed", aliceSeed); r.code != 0 || !strings.Contains(r.stdout, alicePrimary) {
		t.Errorf("init --seed = %+v", r)
	}
	dir2 := t.TempDir()
	if r := kezRun(t, aliceSeed+"\n", nil, "init", "--config", dir2, "--seed", "-"); r.code != 0 || !strings.Contains(r.stdout, alicePrimary) {
		t.Errorf("init --seed - = %+v", r)
	}
	for _, bad := range []string{"abc", aliceSeed[:62], aliceSeed + "00", strings.Replace(aliceSeed, "9", "x", 1)} {
		r := kezRun(t, "", nil, "init", "--config", t.TempDir(), "--seed", bad)
		if r.code != 1 || !strings.Contains(r.stderr, "kez: --seed must be 64 hex digits") {
			t.Errorf("init --seed %s = %+v", bad, r)
		}
	}
}

func TestBadKeyFiles(t *testing.T) {
	write := func(content string, mode os.FileMode) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, keyFile), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	good := `{"seed":"` + aliceSeed + `","primary":"` + alicePrimary + `"}`
	if _, err := loadKey(write(good, 0o600)); err != nil {
		t.Fatalf("good key: %v", err)
	}
	cases := map[string]struct {
		dir  string
		want string
	}{
		"missing":       {t.TempDir(), "no key yet in"},
		"not json":      {write("seed=abc", 0o600), "is not valid JSON"},
		"short seed":    {write(`{"seed":"abcd"}`, 0o600), "seed must be 64 hex digits"},
		"wrong primary": {write(`{"seed":"`+aliceSeed+`","primary":"ed25519:00"}`, 0o600), "primary does not match"},
	}
	if runtime.GOOS != "windows" {
		cases["world readable"] = struct{ dir, want string }{write(good, 0o644), "chmod 600"}
	}
	for name, c := range cases {
		_, err := loadKey(c.dir)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
		// Every command that needs the key says the same in one line.
		r := kezRun(t, "", nil, "--config", c.dir, "send", "bob", "hi")
		if r.code != 1 || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%s: send = %+v", name, r)
		}
	}
}

func TestNotRegisteredYet(t *testing.T) {
	dir := t.TempDir()
	kezRun(t, "", nil, "init", "--config", dir)
	for _, args := range [][]string{{"send", "bob", "hi"}, {"inbox"}, {"listen"}, {"ack"}, {"requests"}, {"accept", "bob"}, {"block", "bob"}, {"contacts"}} {
		r := kezRun(t, "", nil, append([]string{"--config", dir}, args...)...)
		if r.code != 1 || r.stderr != "kez: "+errNotRegistered.Error()+"\n" {
			t.Errorf("%v = %+v", args, r)
		}
	}
	for _, args := range [][]string{{"register", "alice"}, {"whois", "bob"}} {
		r := kezRun(t, "", nil, append([]string{"--config", dir}, args...)...)
		if r.code != 1 || !strings.Contains(r.stderr, "pass --server URL") {
			t.Errorf("%v = %+v", args, r)
		}
	}
	if r := kezRun(t, "", nil, "--config", dir, "register", "Not!Valid", "--server", "http://x"); r.code != 1 || !strings.Contains(r.stderr, "not a valid handle") {
		t.Errorf("bad handle = %+v", r)
	}
}

func TestUnreachableServer(t *testing.T) {
	dir := t.TempDir()
	kezRun(t, "", nil, "init", "--config", dir)
	r := kezRun(t, "", nil, "--config", dir, "register", "alice", "--server", "http://127.0.0.1:1")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "kez: cannot reach the server at http://127.0.0.1:1 (") {
		t.Errorf("register = %+v", r)
	}
	if r := kezRun(t, "", nil, "--config", dir, "register", "alice", "--server", "localhost:8080"); r.code != 1 || !strings.Contains(r.stderr, "must look like https://host") {
		t.Errorf("URL without scheme = %+v", r)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"send"}, {"whois"}, {"whois", "a", "b"}, {"init", "extra"}, {"inbox", "--bogus"}} {
		if r := kezRun(t, "", nil, args...); r.code != 2 {
			t.Errorf("%v = %+v, want exit 2", args, r)
		}
	}
	if r := kezRun(t, "", nil, "help"); r.code != 0 || !strings.Contains(r.stdout, "kez listen") {
		t.Errorf("help = %+v", r)
	}
}

func TestParseInterspersed(t *testing.T) {
	cases := map[string]struct {
		args       []string
		positional string
		server     string
	}{
		"flag last":        {[]string{"alice", "--server", "u"}, "[alice]", "u"},
		"flag first":       {[]string{"--server=u", "alice"}, "[alice]", "u"},
		"between":          {[]string{"bob", "-server", "u", "hello", "world"}, "[bob hello world]", "u"},
		"dash-dash":        {[]string{"bob", "--", "--server", "-x"}, "[bob --server -x]", ""},
		"dash-dash at end": {[]string{"bob", "--"}, "[bob]", ""},
		"lone dash":        {[]string{"bob", "-"}, "[bob -]", ""},
	}
	for name, c := range cases {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		server := fs.String("server", "", "")
		pos, err := parseInterspersed(fs, c.args)
		if err != nil || "["+strings.Join(pos, " ")+"]" != c.positional || *server != c.server {
			t.Errorf("%s: %q server %q err %v", name, pos, *server, err)
		}
	}
}

func TestSafeText(t *testing.T) {
	in := "hi\x1b[2J\x07 there\r\nline2\ttab \u202eevil\u0085"
	want := "hi\uFFFD[2J\uFFFD there\uFFFD\nline2\ttab \uFFFDevil\uFFFD"
	if got := safeText(in); got != want {
		t.Errorf("safeText = %q, want %q", got, want)
	}
}

func TestDescribe(t *testing.T) {
	cases := map[string]error{
		"cannot reach the server at http://x (boom)":             &client.NetworkError{URL: "http://x", Err: errors.New("boom")},
		"http://x does not answer like a KEZ chat server: huh":   &client.ProtocolError{URL: "http://x", Reason: "huh"},
		"the server refused: handle is taken (handle_taken)":     &client.APIError{Status: 409, Code: "handle_taken", Message: "handle is taken"},
		"the server answered Bad Gateway":                        &client.APIError{Status: 502, Message: "Bad Gateway"},
		"the server is limiting your requests; try again in 3s":  &client.APIError{Status: 429, Code: "rate_limited", RetryAfter: 3e9},
		"the server did not accept your signature: stale (is th": &client.APIError{Status: 401, Code: "unauthorized", Message: "stale"},
		"plain": errors.New("plain"),
	}
	for want, err := range cases {
		if got := describe(err); !strings.HasPrefix(got, want) {
			t.Errorf("describe(%v) = %q, want prefix %q", err, got, want)
		}
	}
}

func TestFirstShowing(t *testing.T) {
	const bob = "ed25519:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
	c := &cursor{Shown: map[string]uint64{}}
	for _, step := range []struct {
		from, id string
		seq      uint64
		want     bool
	}{
		{alicePrimary, "m-1", 5, true},
		{alicePrimary, "m-1", 9, false}, // the same message stored again: a replay
		{alicePrimary, "m-1", 5, true},  // inbox listing seq 5 again
		{bob, "m-1", 10, true},          // another sender may use the same id
		{alicePrimary, "m-2", 11, true},
	} {
		if got := c.firstShowing(step.from, step.id, step.seq); got != step.want {
			t.Errorf("firstShowing(%.12s, %q, %d) = %v, want %v", step.from, step.id, step.seq, got, step.want)
		}
	}
	// Bounded: the oldest go first, the newest stay.
	for i := range uint64(3 * maxShown) {
		c.firstShowing(bob, fmt.Sprint("n-", i), 100+i)
	}
	if len(c.Shown) > maxShown+maxShown/4 || len(c.Shown) < maxShown {
		t.Errorf("%d messages remembered, want %d to %d", len(c.Shown), maxShown, maxShown+maxShown/4)
	}
	last := uint64(100 + 3*maxShown - 1)
	if c.firstShowing(bob, fmt.Sprint("n-", last-100), last+1) {
		t.Error("the newest message was forgotten")
	}
}

func TestCursorAndAccountFiles(t *testing.T) {
	dir := t.TempDir()
	a := &account{Server: "http://x", ServerName: "x", Handle: "alice", Primary: alicePrimary}
	if err := saveAccount(dir, a); err != nil {
		t.Fatal(err)
	}
	got, err := loadAccount(dir)
	if err != nil || *got != *a {
		t.Fatalf("account round trip = %+v, %v", got, err)
	}
	cur, err := loadCursor(dir, a)
	if err != nil || cur.LastSeq != 0 || len(cur.Shown) != 0 {
		t.Errorf("fresh cursor = %+v, %v", cur, err)
	}
	cur.LastSeq = 42
	cur.firstShowing(alicePrimary, "m-1", 40)
	if err := cur.save(dir); err != nil {
		t.Fatal(err)
	}
	if cur, _ := loadCursor(dir, a); cur.LastSeq != 42 || cur.firstShowing(alicePrimary, "m-1", 41) {
		t.Errorf("cursor = %+v, want 42 and m-1 shown", cur)
	}
	other := *a
	other.Handle = "bob"
	if cur, _ := loadCursor(dir, &other); cur.LastSeq != 0 || len(cur.Shown) != 0 {
		t.Errorf("another account's cursor = %+v, want a fresh one", cur)
	}
	os.WriteFile(filepath.Join(dir, cursorFile), []byte("{"), 0o600)
	if _, err := loadCursor(dir, a); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("damaged cursor: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	var raw map[string]any
	data, _ := os.ReadFile(filepath.Join(dir, accountFile))
	if json.Unmarshal(data, &raw) != nil || raw["server_name"] != "x" {
		t.Errorf("account.json = %s", data)
	}
}

// bobAt is a config dir for bob, registered on the fake server.
func bobAt(t *testing.T, f *fakeServer) map[string]string {
	dir := t.TempDir()
	if err := saveKey(dir, f.bob, false); err != nil {
		t.Fatal(err)
	}
	if err := saveAccount(dir, &account{Server: f.url, ServerName: fakeName, Handle: "bob", Primary: f.bob.Primary(), RegisteredAt: f.RegisteredAt("bob")}); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"KEZ_CONFIG_DIR": dir}
}

// TestInboxShowsRequestsApart: requests come after the contacts' messages,
// under a heading of their own; what does not open (a case-variant
// envelope, a message whose signer is not the sender the server vouches
// for) is shown as undecryptable, an unknown type as unsupported, a copy
// from one's own key as sent, a receipt as what it says.
func TestInboxShowsRequestsApart(t *testing.T) {
	bob, alice, carol := kez.GenerateKeys(), kez.GenerateKeys(), kez.GenerateKeys()
	f := newFakeServer(t, bob)
	f.register("alice", alice)
	f.register("carol", carol)
	aliceAddr, carolAddr := "alice@"+fakeName, "carol@"+fakeName

	f.add(alice.Primary(), false, seal(t, alice, bob.Primary(), text(aliceAddr, "a1", "hello bob")))
	f.add(carol.Primary(), true, seal(t, carol, bob.Primary(), text(carolAddr, "c1", "hi, I'm carol")))
	variant := strings.Replace(string(seal(t, alice, bob.Primary(), text(aliceAddr, "a2", "case"))), `"nonce"`, `"Nonce"`, 1)
	f.add(alice.Primary(), false, []byte(variant))
	f.add(alice.Primary(), false, seal(t, alice, bob.Primary(), `{"type":"poll","id":"a3","sent_at":1}`))
	f.add(carol.Primary(), false, seal(t, alice, bob.Primary(), text(aliceAddr, "a4", "whose words?")))
	copyOf := fmt.Sprintf(`{"type":"copy","id":"b1","sent_at":1,"to":%q,"to_addr":%q,"of":%s}`, alice.Primary(), aliceAddr, text("bob@"+fakeName, "b0", "see you"))
	f.add(bob.Primary(), false, seal(t, bob, bob.Primary(), copyOf))
	f.add(alice.Primary(), false, seal(t, alice, bob.Primary(), `{"type":"receipt","id":"a5","sent_at":1,"of":["b0"],"state":"read"}`))
	f.add(carol.Primary(), true, seal(t, carol, bob.Primary(), text(carolAddr, "c2", "still there?")))
	f.add(alice.Primary(), false, seal(t, alice, bob.Primary(), `{"type":"copy","id":"a6","sent_at":1,"to":"`+bob.Primary()+`","of":`+text(aliceAddr, "a7", "forged copy")+`}`))

	r := kezRun(t, "", bobAt(t, f), "inbox")
	if r.code != 0 {
		t.Fatalf("inbox = %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	want := []string{
		"#1 @ " + aliceAddr + ": hello bob",
		"#3 @ [undecryptable envelope: not an envelope object: member \"Nonce\" must be spelled \"nonce\"]",
		"#4 @ " + aliceAddr + ": [unsupported message]",
		"#5 @ [undecryptable envelope: the server says it is from " + carol.Primary() + ", the envelope is signed by " + alice.Primary() + "]",
		"#6 @ you → " + aliceAddr + " (sent from another device): see you",
		"#7 @ " + aliceAddr + ": ✓✓ read (1 of your messages)",
		"#9 @ " + aliceAddr + ": [unsupported message]",
		"",
		"message requests: 2 from senders who are not your contacts (kez accept <who> to let them in, kez block <who> to refuse them)",
		"#2 @ " + carolAddr + ": hi, I'm carol",
		"#8 @ " + carolAddr + ": still there?",
	}
	if len(lines) != len(want) {
		t.Fatalf("inbox printed\n%s\nwant %d lines", r.stdout, len(want))
	}
	for i, line := range lines {
		// "#n <date> <time> rest": drop the time, which the test does not know.
		if f := strings.SplitN(line, " ", 4); len(f) == 4 && strings.HasPrefix(line, "#") {
			line = f[0] + " @ " + f[3]
		}
		if line != want[i] {
			t.Errorf("line %d = %q\n   want %q", i+1, line, want[i])
		}
	}

	r = kezRun(t, "", bobAt(t, f), "requests")
	if r.code != 0 || r.stdout != carolAddr+": 2 request(s), first: \"hi, I'm carol\"\n    kez accept "+carolAddr+" | kez block "+carolAddr+"\n" {
		t.Errorf("requests = %+v", r)
	}
}

func TestAcceptAndBlockResolveWho(t *testing.T) {
	bob, carol := kez.GenerateKeys(), kez.GenerateKeys()
	f := newFakeServer(t, bob)
	f.register("carol", carol)
	env := bobAt(t, f)
	stranger := kez.GenerateKeys().Primary()
	for _, c := range []struct {
		args []string
		out  string
		act  string
	}{
		{[]string{"accept", "carol"}, "accepted carol@kez.test: their messages are no longer requests\n", "PUT contacts " + carol.Primary()},
		{[]string{"block", "CAROL@" + fakeName}, "blocked carol@kez.test: their messages are refused and their requests deleted\n", "PUT blocked " + carol.Primary()},
		{[]string{"unblock", carol.Primary()}, "unblocked carol@kez.test: their messages are requests again\n", "DELETE blocked " + carol.Primary()},
		{[]string{"unaccept", stranger}, "unknown key " + stranger[8:12] + " " + stranger[12:16] + " " + stranger[16:20] + " " + stranger[20:24] + "… is no longer a contact: their messages are requests again\n", "DELETE contacts " + stranger},
	} {
		r := kezRun(t, "", env, c.args...)
		f.mu.Lock()
		last := ""
		if len(f.acts) > 0 {
			last = f.acts[len(f.acts)-1]
		}
		f.mu.Unlock()
		if r.code != 0 || r.stdout != c.out || last != c.act {
			t.Errorf("%v = %+v, server saw %q", c.args, r, last)
		}
	}
	for _, who := range []string{"nobody", "ed25519:00"} {
		if r := kezRun(t, "", env, "block", who); r.code != 1 || !strings.HasPrefix(r.stderr, "kez: ") {
			t.Errorf("block %s = %+v", who, r)
		}
	}
	if r := kezRun(t, "", env, "contacts"); r.code != 0 || r.stdout != "accepted (their messages are not requests): 0\nblocked: 0\n" {
		t.Errorf("contacts = %+v", r)
	}
}

// TestReplayShownOnce: a v2 server stores an envelope once, but one that
// relays it again under a new seq does not get it shown twice, not even by
// a later run.
func TestReplayShownOnce(t *testing.T) {
	bob, alice := kez.GenerateKeys(), kez.GenerateKeys()
	f := newFakeServer(t, bob)
	f.register("alice", alice)
	env := seal(t, alice, bob.Primary(), text("alice@"+fakeName, "a1", "only once"))
	f.add(alice.Primary(), false, env)
	f.add(alice.Primary(), false, env)
	cfg := bobAt(t, f)
	if r := kezRun(t, "", cfg, "inbox"); r.code != 0 || strings.Count(r.stdout, "only once") != 1 {
		t.Errorf("inbox = %+v", r)
	}
	f.add(alice.Primary(), false, env)
	if r := kezRun(t, "", cfg, "inbox"); r.code != 0 || strings.Count(r.stdout, "only once") != 1 || !strings.Contains(r.stdout, "#1 ") {
		t.Errorf("a later inbox = %+v; want #1 only", r)
	}
}
