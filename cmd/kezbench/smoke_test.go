package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/kez"
)

func TestMain(m *testing.M) { testcaddy.Main(m) }

// TestSmoke runs every scenario at a tiny scale against a real Caddy (and a
// naive-baseline one) and checks the tool's verdicts: every message exactly
// once, no errors, RSS read. It asserts nothing about speed.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two Caddy processes")
	}
	// As Caddyfile.bench: senders post back to back.
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "sender_rate off"})
	naive := testcaddy.Start(t, testcaddy.Options{BoltBlock: "one_commit_per_message", KezOptions: "sender_rate off"})
	if !strings.Contains(naive.Logs(), "one_commit_per_message") {
		t.Errorf("the baseline server does not say it commits one message per transaction:\n%s", naive.Logs())
	}

	cfg := DefaultConfig()
	cfg.URL, cfg.Baseline, cfg.PID, cfg.Admin = srv.URL, naive.URL, srv.Pid(), srv.AdminAddr
	// Scenarios 1 and 4 stop at MaxMessages; the duration is only a bound,
	// long enough that a loaded CI machine (the naive store fsyncs each
	// message) still reaches the count the test expects.
	cfg.Senders, cfg.Duration, cfg.MaxMessages = 4, 60*time.Second, 40
	cfg.Rate, cfg.Recipients, cfg.RateDuration = 50, 5, 400*time.Millisecond
	cfg.IdleStreams, cfg.Settle = 20, 10*time.Millisecond
	cfg.LargeSenders, cfg.LargeSize = 2, 64<<10
	cfg.DrainTimeout, cfg.OpenTimeout, cfg.Timeout = 20*time.Second, 30*time.Second, 2*time.Minute

	rep := runOK(t, cfg)
	want := map[string]int{"1": 40, "1-naive": 40, "2": 20, "3": 20, "4": 40}
	if len(rep.Results) != len(want) {
		t.Fatalf("%d results, want %d", len(rep.Results), len(want))
	}
	for _, r := range rep.Results {
		if r.Accepted != want[r.ID] || r.Delivery.ExactlyOnce != want[r.ID] {
			t.Errorf("scenario %s: %d accepted, %d exactly once; want %d", r.ID, r.Accepted, r.Delivery.ExactlyOnce, want[r.ID])
		}
	}
	s3 := rep.Results[3]
	if s3.RSSBeforeKiB <= 0 || s3.RSSAfterKiB <= 0 {
		t.Errorf("scenario 3 read no RSS: %+v", s3)
	}
	if s3.StreamProtocol != "HTTP/1.1" {
		t.Errorf("scenario 3 streams over %q, want HTTP/1.1", s3.StreamProtocol)
	}
	if rep.Ratio <= 0 {
		t.Errorf("no group commit vs naive ratio")
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Fatal(err)
	}
}

// Scenario 3 with -h2c: the streams share HTTP/2 connections without TLS,
// all alive; against a server that does not allow h2c, it says so.
func TestSmokeIdleStreamsH2C(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy processes")
	}
	srv := testcaddy.Start(t, testcaddy.Options{Global: "servers {\n\t\tprotocols h1 h2 h2c\n\t}"})
	cfg := DefaultConfig()
	cfg.URL, cfg.PID, cfg.Admin, cfg.Run, cfg.H2C = srv.URL, srv.Pid(), srv.AdminAddr, []int{3}, true
	cfg.IdleStreams, cfg.Settle = 30, 10*time.Millisecond
	cfg.DrainTimeout, cfg.OpenTimeout, cfg.Timeout = 20*time.Second, 30*time.Second, 2*time.Minute
	rep := runOK(t, cfg)
	if r := rep.Results[0]; r.StreamProtocol != "HTTP/2.0" || r.Delivery.ExactlyOnce != 30 || r.RSSAfterKiB <= 0 {
		t.Errorf("over h2c: protocol %q, %d exactly once (want 30), RSS after %d KiB", r.StreamProtocol, r.Delivery.ExactlyOnce, r.RSSAfterKiB)
	}

	h1 := testcaddy.Start(t, testcaddy.Options{Global: "servers {\n\t\tprotocols h1\n\t}"})
	cfg.URL, cfg.PID, cfg.Admin = h1.URL, h1.Pid(), h1.AdminAddr
	if _, err := Run(context.Background(), cfg, io.Discard); err == nil || !strings.Contains(err.Error(), "h2c") {
		t.Errorf("-h2c against a server without h2c: %v, want an error naming h2c", err)
	}
}

func TestSealSized(t *testing.T) {
	a, b := kez.GenerateKeys(), kez.GenerateKeys()
	link, err := a.LinkTo(b.Primary())
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{600, 1024, 1025, 4096, 256 << 10} {
		env, err := sealSized(link, "a@kez.test", size)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(env); n != size && n != size-1 { // base64url cannot make every length
			t.Errorf("size %d: envelope is %d bytes", size, n)
		}
		if !json.Valid(env) {
			t.Errorf("size %d: not JSON", size)
		}
		if _, _, err := b.OpenJSON(env); err != nil {
			t.Errorf("size %d: does not open: %v", size, err)
		}
	}
	if _, err := sealSized(link, "a@kez.test", 100); err == nil {
		t.Error("a 100-byte envelope was made")
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	l := summarize(d)
	if l.N != 100 || l.P50 != 50 || l.P90 != 90 || l.P99 != 99 || l.Max != 100 {
		t.Fatalf("%+v", l)
	}
	if summarize(nil).N != 0 {
		t.Fatal("empty")
	}
}

// The documented server config adapts, is formatted, binds loopback only
// and has the naive baseline on its second site.
func TestCaddyfileBench(t *testing.T) {
	bin := testcaddy.Binary(t)
	out, err := exec.Command(bin, "adapt", "--config", "Caddyfile.bench", "--adapter", "caddyfile").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy adapt: %v\n%s", err, out)
	}
	for _, want := range []string{`"listen":["127.0.0.1:7480"]`, `"listen":["127.0.0.1:7481"]`, `"one_commit_per_message":true`, `"listen":"127.0.0.1:7419"`, `"sender_rate":"off"`, `"protocols":["h1","h2","h2c"]`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapted config lacks %s:\n%s", want, out)
		}
	}
	if strings.Count(string(out), "one_commit_per_message") != 1 {
		t.Errorf("only the baseline site may commit one message per transaction:\n%s", out)
	}
	formatted, err := exec.Command(bin, "fmt", "Caddyfile.bench").Output()
	if err != nil {
		t.Fatal(err)
	}
	if orig, _ := os.ReadFile("Caddyfile.bench"); !bytes.Equal(formatted, orig) {
		t.Errorf("Caddyfile.bench is not formatted (caddy fmt --overwrite)")
	}
}

// runOK runs kezbench with cfg, logs its table and fails the test on a
// setup error or any problem in the report (errors, not exactly once).
func runOK(t *testing.T, cfg Config) *Report {
	t.Helper()
	var log bytes.Buffer
	rep, err := Run(context.Background(), cfg, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	var table bytes.Buffer
	printTable(&table, rep)
	t.Logf("\n%s", table.String())
	if !rep.OK {
		t.Fatalf("problems: %v\n%s", rep.Problems, log.String())
	}
	return rep
}

// The verdict holds whichever of receipt and delivery comes first.
func TestTrackerVerdict(t *testing.T) {
	tr := newTracker()
	u := &user{idx: 1}
	now := time.Now()
	msg := func(seq uint64, env string) client.Message {
		return client.Message{Seq: seq, Envelope: json.RawMessage(env)}
	}
	tr.accepted(u, 1, []byte(`{"a":1}`), now, now.Add(time.Millisecond)) // receipt first
	tr.delivered(u, msg(1, `{"a":1}`), now.Add(3*time.Millisecond))
	tr.delivered(u, msg(2, `{"a":2}`), now) // delivery first
	tr.accepted(u, 2, []byte(`{"a":2}`), now, now.Add(time.Millisecond))
	tr.accepted(u, 3, []byte(`{"a":3}`), now, now)
	tr.delivered(u, msg(3, `{"a":4}`), now) // altered
	tr.accepted(u, 4, []byte(`{}`), now, now)
	tr.delivered(u, msg(4, `{}`), now)
	tr.delivered(u, msg(4, `{}`), now)        // twice
	tr.accepted(u, 5, []byte(`{}`), now, now) // never delivered
	tr.delivered(u, msg(6, `{}`), now)        // never accepted
	d, lat := tr.verdict()
	want := Delivery{Accepted: 5, ExactlyOnce: 2, Missing: 1, Duplicated: 1, Corrupted: 1, Unexpected: 1, EarlyDeliveries: 1}
	if d != want {
		t.Fatalf("verdict %+v\nwant    %+v", d, want)
	}
	if d.OK() || len(lat) != 4 {
		t.Fatalf("OK=%v, %d latencies", d.OK(), len(lat))
	}
	if u.lastSeq.Load() != 6 {
		t.Fatalf("lastSeq %d", u.lastSeq.Load())
	}
}

// Every envelope of a pool is distinct (a v2 server stores one envelope
// once), of the size asked for, from the recipient's sender, in a body
// addressed to the recipient; once signed, every send carries the
// sender's signature over its body, at a timestamp within the window.
func TestSealPoolDistinct(t *testing.T) {
	users := []*user{{idx: 0, handle: "kb-0", keys: kez.GenerateKeys()}, {idx: 1, handle: "kb-1000", keys: kez.GenerateKeys()}}
	p, err := sealPool(users, "kez.test", 1024, 3)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	p.sign(10 * time.Second)
	seen := map[string]bool{}
	for i, sends := range p.byRecipient {
		if len(sends) != 3 {
			t.Fatalf("recipient %d has %d envelopes", i, len(sends))
		}
		for k := range sends {
			s := &sends[k]
			env := s.env
			if n := len(env); n != 1024 && n != 1023 {
				t.Errorf("envelope of %d bytes", n)
			}
			if want := `{"to":"` + users[i].handle + `","envelope":` + string(env) + `}`; string(s.body) != want {
				t.Errorf("body %.80s…, want %.80s…", s.body, want)
			}
			h, err := kez.ReadEnvelopeHeader(env)
			if err != nil || h.From != sender(users, i).keys.Primary() || h.To != users[i].keys.Primary() {
				t.Errorf("envelope for %d: %+v, %v", i, h, err)
			}
			if _, _, err := users[i].keys.OpenJSON(env); err != nil {
				t.Errorf("does not open: %v", err)
			}
			seen[h.Sig] = true
			req := p.request(s)
			pub := sender(users, i).keys.Private().Public().(ed25519.PublicKey)
			ts, _, err := req.Verify(pub, s.auth, before.Add(5*time.Second), time.Second)
			if err != nil {
				t.Errorf("send %d/%d: %v", i, k, err)
			}
			if p.auth(i, s) != s.auth {
				t.Errorf("send %d/%d: signed again within its window", i, k)
			}
			if d := ts - before.Unix(); d < 4 || d > 6 {
				t.Errorf("send %d/%d signed at now%+ds, want the middle of the 10s window", i, k, d)
			}
		}
	}
	if len(seen) != 6 {
		t.Errorf("%d distinct envelopes of 6", len(seen))
	}
	// Past its window a send is signed afresh, and counted.
	p.validUntil = time.Now()
	if a := p.auth(0, &p.byRecipient[0][0]); a == p.byRecipient[0][0].auth || p.signedLate.Load() != 1 {
		t.Errorf("a send past its window was not signed again (%d late)", p.signedLate.Load())
	}
}
