package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/kez"
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

// Registrations under SIGKILL: every binding the server acknowledged is in
// the log after a restart, and every checkpoint it ever served is a prefix
// of every later one (SPEC §5), across restarts.
func TestLogSurvivesCrashes(t *testing.T) {
	srv := testcaddy.Start(t, testcaddy.Options{})
	view := newLogView(t, srv.URL)
	var mu sync.Mutex
	var acked []recordWithLog
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
					if json.Unmarshal(r.body, &rec) == nil {
						mu.Lock()
						acked = append(acked, rec)
						mu.Unlock()
					}
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
	t.Logf("%d registrations acknowledged over %d crashes; log of %d leaves", len(acked), faultRounds(3), final.size)
	if len(acked) == 0 {
		t.Fatal("no registration was acknowledged: the test checked nothing")
	}
	for _, rec := range acked {
		// The receipt's own proof holds, and so does the proof of the
		// same leaf now: the binding survived the crash.
		receiptTree := view.included(rec, rec.Registration)
		served = append(served, receiptTree)
		r := do(t, "GET", srv.URL+"/v1/u/"+rec.Handle, "")
		want(t, "lookup after the crashes", r, 200, "")
		var now recordWithLog
		_ = json.Unmarshal(r.body, &now)
		if now.Log.Index != rec.Log.Index || string(now.Registration) != string(rec.Registration) {
			t.Fatalf("%s: leaf %d acknowledged, %d now", rec.Handle, rec.Log.Index, now.Log.Index)
		}
		view.included(now, now.Registration)
	}
	for _, old := range served {
		view.consistent(old, final)
	}
	// Every leaf is a registration, each index once.
	r := do(t, "GET", fmt.Sprintf("%s/v1/log/entries?start=0&limit=1000", srv.URL), "")
	var entries struct {
		Entries []struct {
			Index int64
			Data  string
		}
	}
	_ = json.Unmarshal(r.body, &entries)
	for i, e := range entries.Entries {
		data, _ := base64.StdEncoding.DecodeString(e.Data)
		if e.Index != int64(i) || !strings.Contains(string(data), `"type":"kez.chat.register"`) {
			t.Fatalf("entry %d: index %d, %.80s", i, e.Index, data)
		}
	}
}

// tryRegister is register without failing the test on a dead server.
func tryRegister(srv *testcaddy.Server, u user) (result, error) {
	reg, err := kez.SignRegistration(u.key, u.handle, testcaddy.ServerName, time.Now())
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
				mu.Lock()
				served = append(served, tr)
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
