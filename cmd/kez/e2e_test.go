package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/kez"
)

func TestMain(m *testing.M) { testcaddy.Main(m) }

// user is one person at a terminal with a config dir of their own, running
// the kez binary built from this package.
type user struct {
	t   *testing.T
	bin string
	dir string
	env []string // more environment, e.g. KEZ_RESOLVE
}

func newUser(t *testing.T) *user {
	return &user{t: t, bin: testcaddy.Build(t, "./cmd/kez"), dir: t.TempDir()}
}

func (u *user) command(stdin string, args ...string) *exec.Cmd {
	cmd := exec.Command(u.bin, args...)
	cmd.Env = append(append(os.Environ(), "KEZ_CONFIG_DIR="+u.dir), u.env...)
	cmd.Stdin = strings.NewReader(stdin)
	return cmd
}

// run runs kez to completion and returns its exit code and output.
func (u *user) run(stdin string, args ...string) result {
	u.t.Helper()
	cmd := u.command(stdin, args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		u.t.Fatal(err)
	}
	return result{code, out.String(), errOut.String()}
}

// must runs kez and fails the test unless it succeeds and prints want.
func (u *user) must(want string, args ...string) string {
	u.t.Helper()
	r := u.run("", args...)
	if r.code != 0 || !strings.Contains(r.stdout, want) {
		u.t.Fatalf("kez %s = %+v, want success printing %q", strings.Join(args, " "), r, want)
	}
	return r.stdout
}

// listener is a running "kez listen" whose output lines are collected.
type listener struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout chan string
	stderr chan string
}

func (u *user) listen(args ...string) *listener {
	u.t.Helper()
	cmd := u.command("", append([]string{"listen"}, args...)...)
	l := &listener{t: u.t, cmd: cmd, stdout: lines(u.t, cmd.StdoutPipe), stderr: lines(u.t, cmd.StderrPipe)}
	if err := cmd.Start(); err != nil {
		u.t.Fatal(err)
	}
	u.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	l.expect(l.stderr, "listening as ")
	return l
}

func lines(t *testing.T, pipe func() (io.ReadCloser, error)) chan string {
	r, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
		close(ch)
	}()
	return ch
}

// expect waits for a line containing want and returns it.
func (l *listener) expect(ch chan string, want string) string {
	l.t.Helper()
	timeout := time.After(15 * time.Second)
	var seen []string
	for {
		select {
		case line, ok := <-ch:
			if !ok {
				l.t.Fatalf("listen ended while waiting for %q; it printed %q", want, seen)
			}
			if strings.Contains(line, want) {
				return line
			}
			seen = append(seen, line)
		case <-timeout:
			l.t.Fatalf("no line with %q from listen; it printed %q", want, seen)
		}
	}
}

// quiet checks that listen printed nothing more on stdout for a moment.
func (l *listener) quiet() {
	l.t.Helper()
	select {
	case line := <-l.stdout:
		l.t.Errorf("unexpected output from listen: %q", line)
	case <-time.After(300 * time.Millisecond):
	}
}

// stop interrupts listen as Ctrl-C does; it must exit cleanly.
func (l *listener) stop() {
	l.t.Helper()
	if err := l.cmd.Process.Signal(os.Interrupt); err != nil {
		l.t.Fatal(err)
	}
	if err := l.cmd.Wait(); err != nil {
		l.t.Errorf("listen after Ctrl-C: %v", err)
	}
}

func TestCLITwoUsersChat(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("uses os.Interrupt on a child process")
	}
	v := clienttest.LoadVectors(t)
	srv := clienttest.Start(t, "")
	alice, bob := newUser(t), newUser(t)
	alice.must("primary: ed25519:", "init")
	bob.must(v.Bob.Primary, "init", "--seed", v.Bob.Seed)
	alice.must("registered alice@"+srv.Name, "register", "alice", "--server", srv.URL)
	bob.must("registered bob@"+srv.Name, "register", "bob", "--server", srv.URL)

	bob.must(v.Bob.Primary, "whois", "bob")
	alice.must(v.Bob.Primary, "whois", "bob@"+srv.Name)
	if r := alice.run("", "whois", "nobody"); r.code != 1 || r.stderr != fmt.Sprintf("kez: no user \"nobody\" on %s\n", srv.URL) {
		t.Errorf("whois nobody = %+v", r)
	}

	// alice is a stranger to bob: her first message is a request.
	l := bob.listen()
	alice.must("sent to bob@"+srv.Name, "send", "bob", "hello", "bob")
	if got := l.expect(l.stdout, "hello bob"); !strings.HasSuffix(got, " request from alice@"+srv.Name+" (not a contact): hello bob") {
		t.Errorf("a request is shown as %q", got)
	}
	bob.must("accepted alice@"+srv.Name, "accept", "alice")

	// Text from stdin; a second line is indented under the first.
	if r := alice.run("from stdin\nsecond line\n", "send", "bob@"+srv.Name); r.code != 0 {
		t.Fatalf("send from stdin = %+v", r)
	}
	if got := l.expect(l.stdout, ": from stdin"); !strings.HasSuffix(got, " alice@"+srv.Name+": from stdin") {
		t.Errorf("a contact's message is shown as %q", got)
	}
	if got := l.expect(l.stdout, "second line"); got != "    second line" {
		t.Errorf("continuation line = %q", got)
	}

	// A reload ends the stream; listen comes back by itself, quietly.
	srv.Reload(t)
	alice.must("sent", "send", "bob", "after reload")
	l.expect(l.stdout, ": after reload")

	// bob's listen sent a delivered receipt for each of his contact's texts
	// (not for her request): alice's inbox shows them once they are stored.
	testwait.Every(t, 200*time.Millisecond, 10*time.Second, "two delivered receipts from bob in alice's inbox", func() bool {
		return strings.Count(alice.run("", "inbox").stdout, "bob@"+srv.Name+": ✓✓ delivered (1 of your messages)") == 2
	})

	// What the browser client sends (the vector envelope, sealed by
	// alice's vector key, here the user "valice") decrypts; what it claims
	// is shown as a claim. A forged one and one with a case-variant member
	// are reported, never shown as text.
	ctx := context.Background()
	vkeys, err := loadKeyFromSeed(v.Alice.Seed)
	if err != nil {
		t.Fatal(err)
	}
	valice, _ := client.New(srv.URL, client.Options{Keys: vkeys, Handle: "valice"})
	if _, err := valice.Register(ctx, "valice"); err != nil {
		t.Fatal(err)
	}
	if _, err := valice.PostEnvelope(ctx, "bob", v.Envelope.Envelope); err != nil {
		t.Fatal(err)
	}
	if got := l.expect(l.stdout, ": hello bob"); !strings.HasSuffix(got, ` request from valice@`+srv.Name+` (claims to be "alice@kez.example") (not a contact): hello bob`) {
		t.Errorf("the vector envelope is shown as %q", got)
	}
	// (Fresh envelopes: the server knows a resend by its sig.)
	vlink, _ := vkeys.LinkTo(v.Bob.Primary)
	fresh := func(text string) kez.Envelope {
		env, err := vlink.Seal(kez.NewTextMessage("alice@kez.example", text, time.Now().UnixMilli()).Marshal())
		if err != nil {
			t.Fatal(err)
		}
		return *env
	}
	forged := fresh("forged")
	forged.CT = "L" + forged.CT[1:]
	if forged.CT == fresh("x").CT {
		t.Fatal("not tampered")
	}
	if _, err := valice.PostEnvelope(ctx, "bob", forged.AppendJSON(nil)); err != nil {
		t.Fatal(err)
	}
	l.expect(l.stdout, "request (not a contact): [undecryptable envelope: signature does not verify with the sender's key]")
	caseEnv := fresh("case")
	variant := strings.Replace(string(caseEnv.AppendJSON(nil)), `"ct"`, `"CT"`, 1)
	if _, err := valice.PostEnvelope(ctx, "bob", json.RawMessage(variant)); err != nil {
		t.Fatal(err)
	}
	l.expect(l.stdout, `[undecryptable envelope: not an envelope object: member "CT" must be spelled "ct"]`)
	// A fourth request from a stranger is refused by the server.
	if _, err := valice.Send(ctx, "bob", "anyone there?"); !errors.Is(err, client.ErrRequestLimit) {
		t.Errorf("fourth request: %v", err)
	}

	// A registered user claiming to be alice is shown as who they are; a
	// message of a type kez does not know is unsupported, never text.
	mallory := kez.GenerateKeys()
	mc, _ := client.New(srv.URL, client.Options{Keys: mallory, Handle: "mallory"})
	if _, err := mc.Register(ctx, "mallory"); err != nil {
		t.Fatal(err)
	}
	link, _ := mallory.LinkTo(v.Bob.Primary)
	spoof := kez.NewTextMessage("alice@"+srv.Name, "it is me, alice", time.Now().UnixMilli())
	env, _ := link.Seal(spoof.Marshal())
	if _, err := mc.PostEnvelope(ctx, "bob", env.AppendJSON(nil)); err != nil {
		t.Fatal(err)
	}
	l.expect(l.stdout, fmt.Sprintf("request from mallory@%s (claims to be \"alice@%s\") (not a contact): it is me, alice", srv.Name, srv.Name))
	poll, _ := link.Seal([]byte(`{"type":"poll","id":"p-1","sent_at":1,"text":"looks like text"}`))
	if _, err := mc.PostEnvelope(ctx, "bob", poll.AppendJSON(nil)); err != nil {
		t.Fatal(err)
	}
	l.expect(l.stdout, fmt.Sprintf("request from mallory@%s (not a contact): [unsupported message]", srv.Name))
	l.quiet()
	l.stop()

	// Requests, by sender; blocking mallory deletes hers and refuses more.
	reqs := bob.must("", "requests")
	for _, want := range []string{"valice@" + srv.Name + ": 3 request(s), first: \"hello bob\"", "mallory@" + srv.Name + ": 2 request(s), first: \"it is me, alice\""} {
		if !strings.Contains(reqs, want) {
			t.Errorf("kez requests printed\n%s\nwant a line %q", reqs, want)
		}
	}
	bob.must("blocked mallory@"+srv.Name, "block", "mallory")
	if _, err := mc.Send(ctx, "bob", "let me in"); !errors.Is(err, client.ErrBlocked) {
		t.Errorf("blocked send: %v", err)
	}
	if r := bob.run("", "requests"); strings.Contains(r.stdout, "mallory") {
		t.Errorf("after the block, requests still lists mallory:\n%s", r.stdout)
	}
	contacts := bob.must("", "contacts")
	if !strings.Contains(contacts, "alice@"+srv.Name) || !strings.Contains(contacts, "blocked: 1\n  mallory@"+srv.Name) {
		t.Errorf("contacts:\n%s", contacts)
	}

	// Restarted, listen resumes after the last message shown.
	alice.must("sent", "send", "bob", "while you were away")
	l = bob.listen()
	l.expect(l.stdout, ": while you were away")
	l.quiet()
	l.stop()

	// The other way round, read with inbox: alice wrote to bob, so bob's
	// answer is not a request for her.
	bob.must("sent to alice@"+srv.Name, "send", "alice", "hi alice")
	if out := alice.must("bob@"+srv.Name+": hi alice", "inbox"); strings.Contains(out, "request") {
		t.Errorf("alice's inbox:\n%s", out)
	}

	// Everything bob saw is still stored until he acknowledges it; the
	// strangers' messages come last, under their own heading. alice's inbox
	// sent bob a delivered receipt for "hi alice", once: a second inbox
	// shows nothing new to her and sends none.
	alice.must("bob@"+srv.Name+": hi alice", "inbox")
	all := bob.must("hello bob", "inbox")
	contactsPart, requestsPart, ok := strings.Cut(all, "\nmessage requests: 3 from senders who are not your contacts")
	if !ok || strings.Count(contactsPart, "#") != 5 || strings.Count(requestsPart, "\n#") != 3 || strings.Contains(contactsPart, "valice") ||
		strings.Count(contactsPart, "alice@"+srv.Name+": ✓✓ delivered (1 of your messages)") != 1 {
		t.Errorf("bob's inbox:\n%s", all)
	}
	bob.must("deleted 8 message(s) up to #", "ack") // mallory's two went with the block
	bob.must("no messages", "inbox")

	if r := alice.run("", "send", "nobody", "hi"); r.code != 1 || r.stderr != "kez: unknown recipient \"nobody\" on "+srv.Name+"\n" {
		t.Errorf("send to nobody = %+v", r)
	}
	if r := alice.run("", "send", "bob"); r.code != 1 || !strings.Contains(r.stderr, "nothing to send") {
		t.Errorf("send without text = %+v", r)
	}
	if r := mallory2(t, srv).run("", "send", "bob", "hi"); r.code != 1 || !strings.Contains(r.stderr, "bob@"+srv.Name+" does not accept messages from you") {
		t.Errorf("blocked send = %+v", r)
	}
}

// mallory2 is a kez user with mallory's role: registered, then blocked by bob.
func mallory2(t *testing.T, srv *clienttest.Server) *user {
	u := newUser(t)
	u.must("", "init")
	u.must("registered", "register", "mallory2", "--server", srv.URL)
	keys, err := loadKey(u.dir)
	if err != nil {
		t.Fatal(err)
	}
	bobKeys, err := loadKeyFromSeed(clienttest.LoadVectors(t).Bob.Seed)
	if err != nil {
		t.Fatal(err)
	}
	bc, _ := client.New(srv.URL, client.Options{Keys: bobKeys, Handle: "bob"})
	if err := bc.Block(context.Background(), keys.Primary()); err != nil {
		t.Fatal(err)
	}
	return u
}

func loadKeyFromSeed(seedHex string) (*kez.Keys, error) {
	seed, err := hex.DecodeString(seedHex)
	if err != nil {
		return nil, err
	}
	return kez.NewKeys(seed)
}

// TestCLIResendStoredOnce: the same envelope sent again (a resend after a
// lost answer) is stored once, also after it was acknowledged, so inbox
// and listen show it once.
func TestCLIResendStoredOnce(t *testing.T) {
	srv := clienttest.Start(t, "")
	alice, bob := newUser(t), newUser(t)
	alice.must("", "init")
	bob.must("", "init")
	alice.must("registered", "register", "alice", "--server", srv.URL)
	bob.must("registered", "register", "bob", "--server", srv.URL)

	keys, err := loadKey(alice.dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ac, _ := client.New(srv.URL, client.Options{Keys: keys, Handle: "alice"})
	r, err := ac.Recipient(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	link, _ := keys.LinkTo(r.Primary)
	env, _ := link.Seal(kez.NewTextMessage("alice@"+srv.Name, "only once", time.Now().UnixMilli()).Marshal())
	var first uint64
	resend := func() {
		t.Helper()
		rcpt, err := ac.PostEnvelope(ctx, "bob", env.AppendJSON(nil))
		if err != nil {
			t.Fatal(err)
		}
		if first == 0 {
			first = rcpt.Seq
		} else if rcpt.Seq != first || !rcpt.AlreadyStored {
			t.Errorf("resend = %+v; want the original receipt (seq %d)", rcpt, first)
		}
	}
	resend()
	resend()
	if out := bob.must("only once", "inbox"); strings.Count(out, "only once") != 1 {
		t.Errorf("inbox shows a resend twice:\n%s", out)
	}
	bob.must("deleted 1 message(s)", "ack")
	resend()
	if out := bob.must("", "inbox"); strings.Contains(out, "only once") {
		t.Errorf("a later inbox shows the resend again:\n%s", out)
	}
	l := bob.listen()
	resend()
	alice.must("sent", "send", "bob", "something new")
	if got := l.expect(l.stdout, "#"); !strings.HasSuffix(got, ": something new") {
		t.Errorf("listen printed %q first, want the new message (not the resend)", got)
	}
	l.quiet()
	l.stop()
}

// TestCLIListenOutlivesStreamMaxAge: the server ends every stream after
// stream_max_age; listen reconnects with a new signature, silently, and
// shows every message once.
func TestCLIListenOutlivesStreamMaxAge(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("uses os.Interrupt on a child process")
	}
	srv := clienttest.Start(t, "stream_max_age 1s")
	alice, bob := newUser(t), newUser(t)
	alice.must("", "init")
	bob.must("", "init")
	alice.must("registered", "register", "alice", "--server", srv.URL)
	bob.must("registered", "register", "bob", "--server", srv.URL)
	bob.must("accepted", "accept", "alice")
	l := bob.listen()
	for i := range 4 {
		time.Sleep(700 * time.Millisecond)
		alice.must("sent", "send", "bob", fmt.Sprint("tick ", i))
		l.expect(l.stdout, fmt.Sprint(": tick ", i))
	}
	l.quiet()
	l.stop()
	for line := range l.stderr { // closed when listen has exited
		t.Errorf("listen wrote %q to stderr; the stream's end is not news", line)
	}
}

func TestCLIServerGone(t *testing.T) {
	srv := clienttest.Start(t, "")
	u := newUser(t)
	u.must("", "init")
	u.must("registered", "register", "carol", "--server", srv.URL)
	// The account points at a server that now knows nothing of carol.
	other := clienttest.Start(t, "")
	acct, err := loadAccount(u.dir)
	if err != nil {
		t.Fatal(err)
	}
	acct.Server = other.URL
	if err := saveAccount(u.dir, acct); err != nil {
		t.Fatal(err)
	}
	r := u.run("", "inbox")
	if r.code != 1 || !strings.Contains(r.stderr, "carol@kez.test is not registered on "+other.URL) {
		t.Errorf("inbox on a reset server = %+v", r)
	}
	// And at one that does not answer at all.
	acct.Server = "http://127.0.0.1:1"
	_ = saveAccount(u.dir, acct)
	if r := u.run("", "send", "bob", "hi"); r.code != 1 || !strings.HasPrefix(r.stderr, "kez: cannot reach the server at http://127.0.0.1:1 (") {
		t.Errorf("send to a dead server = %+v", r)
	}
}

// The server is reset and bob registers again from his laptop (same key).
// His first computer notices the binding is new: listen starts over at seq 1
// instead of at its old cursor, and a bare ack removes only what it showed.
func TestCLIServerReset(t *testing.T) {
	v := clienttest.LoadVectors(t)
	srv := clienttest.Start(t, "")
	alice, bob, laptop := newUser(t), newUser(t), newUser(t)
	alice.must("", "init")
	bob.must(v.Bob.Primary, "init", "--seed", v.Bob.Seed)
	laptop.must(v.Bob.Primary, "init", "--seed", v.Bob.Seed)
	alice.must("registered", "register", "alice", "--server", srv.URL)
	bob.must("registered", "register", "bob", "--server", srv.URL)
	for i := range 3 {
		alice.must("sent", "send", "bob", fmt.Sprintf("before the reset %d", i))
	}
	l := bob.listen()
	l.expect(l.stdout, ": before the reset 2") // bob's cursor is at seq 3
	l.stop()

	srv.Reset(t)
	if r := bob.run("", "listen"); r.code != 1 || !strings.Contains(r.stderr, "was the server reset?") {
		t.Errorf("listen on the reset server = %+v", r)
	}
	// A binding is told apart by its registered_at, in seconds; a real reset
	// comes later than the second of the first registration, this test may not.
	first, err := loadAccount(bob.dir)
	if err != nil {
		t.Fatal(err)
	}
	for time.Now().Unix() <= first.RegisteredAt {
		time.Sleep(50 * time.Millisecond)
	}
	laptop.must("registered bob@", "register", "bob", "--server", srv.URL)
	// A reset server has a new log under a new key: alice's kez, which
	// pinned the old one, refuses it until she says she knows why.
	if r := alice.run("", "register", "alice", "--server", srv.URL); r.code != 1 ||
		!strings.Contains(r.stderr, "not signed by the pinned log key") || !strings.Contains(r.stderr, "kez log reset --yes") {
		t.Errorf("register on the reset server with the old log key pinned = %+v", r)
	}
	alice.must("forgot the log", "log", "reset", "--yes")
	bob.must("forgot the log", "log", "reset", "--yes")
	alice.must("registered", "register", "alice", "--server", srv.URL)
	alice.must("sent", "send", "bob", "after the reset 1")
	alice.must("sent", "send", "bob", "after the reset 2")
	l = bob.listen()
	l.expect(l.stdout, ": after the reset 1")
	l.expect(l.stdout, ": after the reset 2")
	l.stop()
	acct, err := loadAccount(bob.dir)
	if err != nil {
		t.Fatal(err)
	}
	if laptopAcct, err := loadAccount(laptop.dir); err != nil || acct.RegisteredAt != laptopAcct.RegisteredAt {
		t.Errorf("bob's account kept binding time %d, the server's is %+v (%v)", acct.RegisteredAt, laptopAcct, err)
	}

	alice.must("sent", "send", "bob", "not shown yet")
	bob.must("", "ack")
	if out := laptop.must("", "inbox"); !strings.Contains(out, "not shown yet") || strings.Contains(out, "after the reset") {
		t.Errorf("after bob's ack the inbox holds:\n%s", out)
	}
}
