package nats

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

// longFailover enables the crash test with nats-server processes: KEZ_NATS_LONG=1.
var longFailover = os.Getenv("KEZ_NATS_LONG") != ""

// The inbox stream's leader is shut down while two servers send: writes
// fail for a moment, then resume on the new leader; every acknowledged
// message is stored exactly once and reaches both feeds, in order.
func TestLeaderLossUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster failover")
	}
	c := natstest.RunCluster(t, 3)
	leaderLoss(t, inProcess{c}, 1, 4)
}

// The same with nats-server processes that fsync every write, and a real
// crash: SIGKILL, so no step-down, and an election after the timeout.
// Long: KEZ_NATS_LONG=1.
func TestLeaderCrashUnderLoad(t *testing.T) {
	if !longFailover {
		t.Skip("set KEZ_NATS_LONG=1 (builds nats-server, waits for elections)")
	}
	leaderLoss(t, processes{natstest.RunProcesses(t, 3)}, 3, 8)
}

// faultCluster loses and brings back nodes.
type faultCluster interface {
	URLs() []string
	StreamLeader(stream string) int
	lose(t *testing.T, i int)
	back(t *testing.T, i int)
}

type inProcess struct{ *natstest.Cluster }

func (c inProcess) lose(_ *testing.T, i int) { c.Stop(i) }
func (c inProcess) back(t *testing.T, i int) {
	c.Restart(t, i)
	c.WaitMetaLeader(t, 20*time.Second)
}

type processes struct{ *natstest.Procs }

func (p processes) lose(_ *testing.T, i int) { p.Kill(i) }
func (p processes) back(t *testing.T, i int) { p.Start(t, i) }

func leaderLoss(t *testing.T, c faultCluster, rounds, senders int) {
	ctx := context.Background()
	rec1, rec2 := newRecorder(), newRecorder()
	var disconnects atomic.Int32
	opts := func(rec *recorder) Options {
		return Options{URLs: c.URLs(), Prefix: "fo", Replicas: 3, Timeout: DefaultTimeout, Notify: rec.notify,
			Disconnected: func(error) { disconnects.Add(1) }}
	}
	s1, s2 := open(t, opts(rec1)), open(t, opts(rec2))
	storagetest.Register(t, s1, "alice", 1)
	accept(t, s1, "alice")

	var mu sync.Mutex
	acked := map[uint64]string{} // seq → envelope
	failed := 0
	var stop atomic.Bool
	var wg sync.WaitGroup
	var next atomic.Int64
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := []*Store{s1, s2}[i%2]
			for !stop.Load() {
				env := fmt.Sprintf(`{"n":%d}`, next.Add(1))
				m, _, err := s.Append(ctx, delivery("alice", []byte(env)), storage.Limits{})
				mu.Lock()
				if err != nil {
					failed++
				} else if prev, dup := acked[m.Seq]; dup {
					t.Errorf("seq %d acknowledged twice (%s and %s)", m.Seq, prev, env)
				} else {
					acked[m.Seq] = env
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	ackedNow := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	for round := range rounds {
		waitFor(t, 10*time.Second, "writes before the loss", func() bool { return ackedNow() >= (round+1)*50 })
		leader := -1
		waitFor(t, 15*time.Second, "a stream leader", func() bool { leader = c.StreamLeader(s1.InboxStream()); return leader >= 0 })
		before := ackedNow()
		lost := time.Now()
		c.lose(t, leader)
		waitFor(t, 30*time.Second, "writes after the loss", func() bool { return ackedNow() >= before+50 })
		t.Logf("round %d: node %d lost; 50 more writes acknowledged %s later", round+1, leader+1, time.Since(lost).Round(time.Millisecond))
		restart := time.Now()
		c.back(t, leader)
		t.Logf("round %d: node %d back in %s", round+1, leader+1, time.Since(restart).Round(time.Millisecond))
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d acknowledged, %d failed during elections, %d disconnects", len(acked), failed, disconnects.Load())

	t.Logf("checking")
	// Every acknowledged message is stored once, with its envelope.
	check := open(t, Options{URLs: c.URLs(), Prefix: "fo", Replicas: 3})
	stored := map[uint64]string{}
	seenEnv := map[string]bool{}
	since := uint64(0)
	for {
		page, more, err := check.Read(ctx, "alice", since, 500)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range page {
			if seenEnv[string(m.Envelope)] {
				t.Errorf("envelope %s stored twice", m.Envelope)
			}
			seenEnv[string(m.Envelope)] = true
			stored[m.Seq] = string(m.Envelope)
			since = m.Seq
		}
		if !more {
			break
		}
	}
	for seq, env := range acked {
		if stored[seq] != env {
			t.Errorf("acknowledged seq %d (%s) lost: stored %q", seq, env, stored[seq])
		}
	}
	// Both feeds delivered every stored message, in order.
	for i, r := range []*recorder{rec1, rec2} {
		waitFor(t, 20*time.Second, fmt.Sprintf("feed %d to catch up", i+1), func() bool { return r.count("alice") >= len(stored) })
		r.mu.Lock()
		seqs := r.seqs["alice"]
		for j := 1; j < len(seqs); j++ {
			if seqs[j] <= seqs[j-1] {
				t.Errorf("feed %d: %d after %d", i+1, seqs[j], seqs[j-1])
			}
		}
		r.mu.Unlock()
	}
}
