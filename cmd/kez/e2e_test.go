package main

import (
	"bufio"
	"context"
	"encoding/json"
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
	"github.com/kezchat/kez/kez"
)

func TestMain(m *testing.M) { testcaddy.Main(m) }

// user is one person at a terminal with a config dir of their own, running
// the kez binary built from this package.
type user struct {
	t   *testing.T
	bin string
	dir string
}

func newUser(t *testing.T) *user {
	return &user{t: t, bin: testcaddy.Build(t, "./cmd/kez"), dir: t.TempDir()}
}

func (u *user) command(stdin string, args ...string) *exec.Cmd {
	cmd := exec.Command(u.bin, args...)
	cmd.Env = append(os.Environ(), "KEZ_CONFIG_DIR="+u.dir)
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

	l := bob.listen()
	alice.must("sent to bob@"+srv.Name, "send", "bob", "hello", "bob")
	l.expect(l.stdout, " alice@"+srv.Name+": hello bob")

	// Text from stdin; a second line is indented under the first.
	if r := alice.run("from stdin\nsecond line\n", "send", "bob@"+srv.Name); r.code != 0 {
		t.Fatalf("send from stdin = %+v", r)
	}
	l.expect(l.stdout, ": from stdin")
	if got := l.expect(l.stdout, "second line"); got != "    second line" {
		t.Errorf("continuation line = %q", got)
	}

	// A reload ends the stream; listen comes back by itself.
	srv.Reload(t)
	l.expect(l.stderr, "connection lost")
	l.expect(l.stderr, "reconnected")
	alice.must("sent", "send", "bob", "after reload")
	l.expect(l.stdout, ": after reload")

	// What the browser client sends (the vector envelope from alice's
	// vector key) decrypts; that key has no handle here, so it is named by
	// the key and what it claims is marked as a claim. A forged one is
	// reported, never shown as text.
	anon, _ := client.New(srv.URL, client.Options{})
	ctx := context.Background()
	if _, err := anon.PostEnvelope(ctx, "bob", v.Envelope.Envelope); err != nil {
		t.Fatal(err)
	}
	if got := l.expect(l.stdout, ": hello bob"); !strings.HasSuffix(got, ` unknown key d75a 9801 82b1 0ab7… (unverified claim: "alice@kez.example"): hello bob`) {
		t.Errorf("a sender without a handle is shown as %q", got)
	}
	var forged kez.Envelope
	if err := json.Unmarshal(v.Envelope.Envelope, &forged); err != nil {
		t.Fatal(err)
	}
	forged.CT = "L" + forged.CT[1:]
	if _, err := anon.PostEnvelope(ctx, "bob", forged.AppendJSON(nil)); err != nil {
		t.Fatal(err)
	}
	l.expect(l.stdout, "[undecryptable envelope: signature does not verify with the sender's key]")

	// A registered user claiming to be alice is shown as who they are.
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
	l.expect(l.stdout, fmt.Sprintf("mallory@%s (claims to be \"alice@%s\"): it is me, alice", srv.Name, srv.Name))
	l.quiet()
	l.stop()

	// Restarted, listen resumes after the last message shown.
	alice.must("sent", "send", "bob", "while you were away")
	l = bob.listen()
	l.expect(l.stdout, ": while you were away")
	l.quiet()
	l.stop()

	// The other way round, read with inbox.
	bob.must("sent to alice@"+srv.Name, "send", "alice", "hi alice")
	alice.must("bob@"+srv.Name+": hi alice", "inbox")

	// Everything bob saw is still stored until he acknowledges it.
	all := bob.must("hello bob", "inbox")
	if n := strings.Count(all, "\n#"); n < 6 {
		t.Errorf("bob's inbox lists %d messages:\n%s", n+1, all)
	}
	bob.must("deleted 7 message(s) up to #7", "ack")
	bob.must("no messages", "inbox")

	if r := alice.run("", "send", "nobody", "hi"); r.code != 1 || r.stderr != "kez: unknown recipient \"nobody\" on "+srv.Name+"\n" {
		t.Errorf("send to nobody = %+v", r)
	}
	if r := alice.run("", "send", "bob"); r.code != 1 || !strings.Contains(r.stderr, "nothing to send") {
		t.Errorf("send without text = %+v", r)
	}
}

// TestCLIReplayShownOnce: the same envelope stored again under a new seq is
// shown once, also by a later run, by inbox and by listen.
func TestCLIReplayShownOnce(t *testing.T) {
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
	replay := func() {
		t.Helper()
		if _, err := ac.PostEnvelope(ctx, "bob", env.AppendJSON(nil)); err != nil {
			t.Fatal(err)
		}
	}
	replay()
	replay()
	if out := bob.must("only once", "inbox"); strings.Count(out, "only once") != 1 {
		t.Errorf("inbox shows a replay twice:\n%s", out)
	}
	bob.must("deleted 2 message(s)", "ack")
	// A later run remembers what was shown.
	replay()
	if out := bob.must("", "inbox"); strings.Contains(out, "only once") {
		t.Errorf("a later inbox shows the replay again:\n%s", out)
	}
	l := bob.listen()
	replay()
	alice.must("sent", "send", "bob", "something new")
	if got := l.expect(l.stdout, "#"); !strings.HasSuffix(got, ": something new") {
		t.Errorf("listen printed %q first, want the new message (not the replay)", got)
	}
	l.quiet()
	l.stop()
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
