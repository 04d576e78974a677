package e2e

import (
	"bytes"
	"crypto/ed25519"
	crand "crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/internal/testcaddy"
	kezpkg "github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage/nats/natstest"
)

// logView is what a client sees of a server's binding log: its pinned key
// and every checkpoint served.
type logView struct {
	t        testing.TB
	base     string
	verifier note.Verifier
}

func newLogView(t testing.TB, base string) *logView {
	t.Helper()
	r := do(t, "GET", base+"/v1/log/key", "")
	want(t, "log key", r, 200, "")
	v, err := note.NewVerifier(strings.TrimSpace(string(r.body)))
	if err != nil {
		t.Fatalf("log key %q: %v", r.body, err)
	}
	return &logView{t: t, base: base, verifier: v}
}

// tree is a checked checkpoint: size and root.
type tree struct {
	size int64
	root tlog.Hash
}

// open verifies a checkpoint note and returns its tree.
func (l *logView) open(text string) tree {
	l.t.Helper()
	n, err := note.Open([]byte(text), note.VerifierList(l.verifier))
	if err != nil {
		l.t.Fatalf("checkpoint does not verify: %v\n%s", err, text)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) != 4 || lines[0] != l.verifier.Name() || lines[3] != "" {
		l.t.Fatalf("checkpoint text %q", n.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		l.t.Fatal(err)
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		l.t.Fatal(err)
	}
	return tree{size, root}
}

func (l *logView) latest() tree {
	l.t.Helper()
	r := do(l.t, "GET", l.base+"/v1/log/checkpoint", "")
	want(l.t, "checkpoint", r, 200, "")
	return l.open(string(r.body))
}

// consistent checks that the server proves old is a prefix of new.
func (l *logView) consistent(old, new tree) {
	l.t.Helper()
	if old.size == 0 || old.size == new.size {
		if old.size == new.size && old.root != new.root {
			l.t.Fatalf("two roots for size %d: the log forked", old.size)
		}
		return
	}
	r := do(l.t, "GET", fmt.Sprintf("%s/v1/log/consistency?old=%d&new=%d", l.base, old.size, new.size), "")
	want(l.t, "consistency", r, 200, "")
	var out struct{ Proof []string }
	_ = json.Unmarshal(r.body, &out)
	proof := make(tlog.TreeProof, len(out.Proof))
	for i, s := range out.Proof {
		h, err := tlog.ParseHash(s)
		if err != nil {
			l.t.Fatal(err)
		}
		proof[i] = h
	}
	if err := tlog.CheckTree(proof, new.size, new.root, old.size, old.root); err != nil {
		l.t.Fatalf("checkpoint %d is not a prefix of %d: %v", old.size, new.size, err)
	}
}

// included checks that leaf data is at index in the tree, with the
// server's own proof from a record lookup.
func (l *logView) included(rec recordWithLog, data []byte) tree {
	l.t.Helper()
	tr := l.open(rec.Log.Checkpoint)
	proof := make(tlog.RecordProof, len(rec.Log.Inclusion))
	for i, s := range rec.Log.Inclusion {
		h, err := tlog.ParseHash(s)
		if err != nil {
			l.t.Fatal(err)
		}
		proof[i] = h
	}
	if err := tlog.CheckRecord(proof, tr.size, tr.root, rec.Log.Index, tlog.RecordHash(data)); err != nil {
		l.t.Fatalf("%s's leaf %d is not in the checkpoint of %d: %v", rec.Handle, rec.Log.Index, tr.size, err)
	}
	return tr
}

type recordWithLog struct {
	Handle       string
	Primary      string
	Registration json.RawMessage
	Log          struct {
		Index      int64
		Checkpoint string
		Inclusion  []string
	}
}

// Registrations and rotations under SIGKILL: every binding change the
// server acknowledged is in the log after a restart, every checkpoint it
// ever served is a prefix of every later one (SPEC §5), and `kez log
// verify` passes on the result. CI kills 3 times; KEZ_FAULT_ROUNDS=20 for
// the long run of RELIABILITY.md.
func TestLogSurvivesCrashes(t *testing.T) {
	srv := testcaddy.Start(t, testcaddy.Options{})
	view := newLogView(t, srv.URL)
	var mu sync.Mutex
	var acked []ackedChange            // every acknowledged registration and rotation
	latest := map[string]ackedChange{} // handle → its last acknowledged change
	var served []tree
	for round := range faultRounds(3) {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					u := newUser(fmt.Sprintf("r%dw%di%d", round, w, i))
					r, err := tryRegister(srv, u)
					if err != nil {
						return // the server died under us
					}
					if r.status != 201 {
						continue
					}
					var rec recordWithLog
					if json.Unmarshal(r.body, &rec) != nil {
						continue
					}
					change := ackedChange{rec, rec.Registration}
					if i%2 == 1 { // every other user replaces its key at once
						_, next, err := tryRotate(srv, u)
						if err != nil {
							return
						}
						if next != nil {
							change = *next
						}
					}
					mu.Lock()
					acked = append(acked, ackedChange{rec, rec.Registration})
					if change.data != nil && string(change.data) != string(rec.Registration) {
						acked = append(acked, change)
					}
					latest[rec.Handle] = change
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(200+rand.IntN(400)) * time.Millisecond)
		mu.Lock()
		served = append(served, view.latest())
		mu.Unlock()
		time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		srv.Kill()
		close(stop)
		wg.Wait()
		srv.Start(t, srv.Opts)
	}
	final := view.latest()
	rotations := len(acked) - len(latest)
	t.Logf("%d registrations and %d rotations acknowledged over %d crashes; log of %d leaves", len(latest), rotations, faultRounds(3), final.size)
	if len(latest) == 0 || rotations == 0 {
		t.Fatal("no registration or no rotation was acknowledged: the test checked nothing")
	}
	for _, c := range acked {
		// The receipt's own proof holds in the checkpoint it came with.
		served = append(served, view.included(c.rec, c.data))
	}
	for handle, c := range latest {
		// The lookup now proves the handle's last acknowledged change (or
		// a later one whose answer the crash lost).
		r := do(t, "GET", srv.URL+"/v1/u/"+handle, "")
		want(t, "lookup after the crashes", r, 200, "")
		var now struct {
			recordWithLog
			Rotation json.RawMessage
		}
		_ = json.Unmarshal(r.body, &now)
		if now.Log.Index < c.rec.Log.Index {
			t.Fatalf("%s: leaf %d acknowledged, the lookup proves %d", handle, c.rec.Log.Index, now.Log.Index)
		}
		data := []byte(now.Registration)
		if now.Rotation != nil {
			data = now.Rotation
		}
		if now.Log.Index == c.rec.Log.Index && string(data) != string(c.data) {
			t.Fatalf("%s: leaf %d holds another change than the one acknowledged", handle, c.rec.Log.Index)
		}
		view.included(now.recordWithLog, data)
	}
	for _, old := range served {
		view.consistent(old, final)
	}
	// A client that checks the whole log agrees: every entry a valid
	// signed change that follows from those before it, hashing to the root.
	kez := testcaddy.Build(t, "./cmd/kez")
	cmd := exec.Command(kez, "log", "verify", "--server", srv.URL)
	cmd.Env = append(os.Environ(), "KEZ_CONFIG_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok: ") {
		t.Fatalf("kez log verify: %v\n%s", err, out)
	}
	t.Logf("kez log verify: %s", strings.SplitN(string(out), "\n", 3)[:2])
}

// ackedChange is a binding change the server acknowledged: its receipt and
// the leaf data it logged.
type ackedChange struct {
	rec  recordWithLog
	data []byte
}

// tryRotate replaces u's key, without failing the test on a dead server.
// It returns the acknowledged change, or nil when the rotation was refused.
func tryRotate(srv *testcaddy.Server, u user) (result, *ackedChange, error) {
	_, next, err := ed25519.GenerateKey(crand.Reader)
	if err != nil {
		return result{}, nil, err
	}
	rot, err := kezpkg.SignRotation(u.key, next, u.handle, testcaddy.ServerName, time.Now())
	if err != nil {
		return result{}, nil, err
	}
	res, err := client.Post(srv.URL+"/v1/rotate", "application/json", bytes.NewReader(rot.JCS()))
	if err != nil {
		return result{}, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	r := result{status: res.StatusCode, header: res.Header, body: b}
	if err != nil || r.status != 200 {
		return r, nil, err
	}
	var rec recordWithLog
	if err := json.Unmarshal(b, &rec); err != nil {
		return r, nil, err
	}
	return r, &ackedChange{rec, rot.JCS()}, nil
}

// tryRegister is register without failing the test on a dead server.
func tryRegister(srv *testcaddy.Server, u user) (result, error) {
	reg, err := kezpkg.SignRegistration(u.key, u.handle, testcaddy.ServerName, time.Now())
	if err != nil {
		return result{}, err
	}
	body, _ := json.Marshal(reg)
	res, err := client.Post(srv.URL+"/v1/register", "application/json", bytes.NewReader(body))
	if err != nil {
		return result{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return result{status: res.StatusCode, header: res.Header, body: b}, err
}

// Two instances on one NATS registering at the same time write one log:
// one sequence, no fork, every checkpoint of either a prefix of the last.
func TestNatsInstancesShareOneLog(t *testing.T) {
	t.Parallel()
	c := natstest.Run(t)
	opts := testcaddy.Options{Storage: natsStorage(c)}
	srv1, srv2 := testcaddy.Start(t, opts), testcaddy.Start(t, opts)
	view1, view2 := newLogView(t, srv1.URL), newLogView(t, srv2.URL)
	if view1.verifier.KeyHash() != view2.verifier.KeyHash() {
		t.Fatal("the two instances serve different log keys")
	}
	var mu sync.Mutex
	var served []tree
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv, view := []*testcaddy.Server{srv1, srv2}[w%2], []*logView{view1, view2}[w%2]
			for i := range 8 {
				r, err := tryRegister(srv, newUser(fmt.Sprintf("n%dx%d", w, i)))
				if err != nil || r.status != 201 {
					t.Errorf("register through instance %d: %v %d %s", w%2+1, err, r.status, r.body)
					return
				}
				var rec recordWithLog
				_ = json.Unmarshal(r.body, &rec)
				tr := view.included(rec, rec.Registration)
				// The other instance proves the same leaf, under the same key.
				other, otherView := []*testcaddy.Server{srv2, srv1}[w%2], []*logView{view2, view1}[w%2]
				lr, err := http.Get(other.URL + "/v1/u/" + rec.Handle)
				if err != nil {
					t.Errorf("lookup through the other instance: %v", err)
					return
				}
				var there recordWithLog
				_ = json.NewDecoder(lr.Body).Decode(&there)
				lr.Body.Close()
				if there.Log.Index != rec.Log.Index {
					t.Errorf("%s: leaf %d through one instance, %d through the other", rec.Handle, rec.Log.Index, there.Log.Index)
					return
				}
				mu.Lock()
				served = append(served, tr, otherView.included(there, there.Registration))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	final := view1.latest()
	if final.size != 48 {
		t.Fatalf("the log holds %d leaves after 48 registrations", final.size)
	}
	if f2 := view2.latest(); f2 != final {
		t.Fatalf("instance 2's checkpoint %d differs from instance 1's %d", f2.size, final.size)
	}
	for _, old := range served {
		view1.consistent(old, final)
	}
}
