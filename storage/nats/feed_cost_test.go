package nats

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

// TestFeedCost measures the two ways a server can learn of messages stored
// through another one, on a 3-node cluster with R3 streams:
//
//   - consumer: the ordered consumer this package uses; every message,
//     envelope included, flows to every server, in order, with no gap;
//   - republish+reread: the stream republishes each message's headers
//     (core NATS, at most once) and the server reads the envelope back
//     with a direct get by sequence. Shown also without the re-read
//     (republish full), which would lose messages silently.
//
// It prints throughput (messages per second through the receiving
// server), delivery latency (send start → Notify, p50/p99) and the whole
// process's CPU per message (servers and clients run in this process).
//
//	KEZ_NATS_BENCH=1 go test -run FeedCost -v ./storage/nats/
func TestFeedCost(t *testing.T) {
	if os.Getenv("KEZ_NATS_BENCH") == "" {
		t.Skip("set KEZ_NATS_BENCH=1 to measure")
	}
	c := natstest.RunCluster(t, 3)
	n := 4000
	if v, err := strconv.Atoi(os.Getenv("KEZ_NATS_BENCH_N")); err == nil {
		n = v
	}
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("KEZ_NATS_BENCH_ROUNDS")); err == nil {
		rounds = v
	}
	modes := []string{"consumer", "republish+reread", "republish full (lossy)"}
	results := map[string][]feedResult{}
	for round := range rounds {
		for _, size := range []int{1 << 10, 64 << 10} {
			for i := range modes {
				mode := modes[(i+round)%len(modes)] // vary the order between rounds
				key := fmt.Sprintf("| %s | %d KiB", mode, size>>10)
				results[key] = append(results[key], measureFeed(t, c, mode, size, n))
			}
		}
	}
	var rows []string
	for _, size := range []int{1 << 10, 64 << 10} {
		for _, mode := range modes {
			key := fmt.Sprintf("| %s | %d KiB", mode, size>>10)
			r := medians(results[key])
			rows = append(rows, fmt.Sprintf("%s | %.0f | %s | %s | %.0f µs |",
				key, r.rate, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.cpuPerMsg))
		}
	}
	t.Logf("%d messages from 16 senders, median of %d rounds\n| live delivery | envelope | msgs/s | latency p50 | latency p99 | CPU per message |\n| --- | --- | --- | --- | --- | --- |\n%s",
		n, rounds, strings.Join(rows, "\n"))
}

// medians takes each figure's median over rounds.
func medians(rs []feedResult) feedResult {
	med := func(f func(feedResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return feedResult{
		rate:      med(func(r feedResult) float64 { return r.rate }),
		p50:       time.Duration(med(func(r feedResult) float64 { return float64(r.p50) })),
		p99:       time.Duration(med(func(r feedResult) float64 { return float64(r.p99) })),
		cpuPerMsg: med(func(r feedResult) float64 { return r.cpuPerMsg }),
	}
}

type feedResult struct {
	rate      float64
	p50, p99  time.Duration
	cpuPerMsg float64
}

var benchRuns atomic.Int64

func measureFeed(t *testing.T, c *natstest.Cluster, mode string, size, n int) feedResult {
	ctx := context.Background()
	prefix := fmt.Sprintf("bench%d", benchRuns.Add(1))
	var mu sync.Mutex
	lat := make([]time.Duration, 0, n)
	done := make(chan struct{})
	got := 0
	record := func(env []byte) {
		var v struct {
			T int64 `json:"t"`
		}
		if json.Unmarshal(env, &v) != nil {
			t.Errorf("undecodable envelope")
			return
		}
		d := time.Since(time.Unix(0, v.T))
		mu.Lock()
		lat = append(lat, d)
		got++
		if got == n {
			close(done)
		}
		mu.Unlock()
	}
	sender := open(t, Options{URLs: []string{c.URL(0)}, Prefix: prefix, Replicas: 3})
	storagetest.Register(t, sender, "alice", 1)
	accept(t, sender, "alice")
	switch mode {
	case "consumer":
		open(t, Options{URLs: []string{c.URL(1)}, Prefix: prefix, Replicas: 3,
			Notify: func(_ string, m storage.Message) { record(m.Envelope) }})
	default:
		full := !strings.HasPrefix(mode, "republish+")
		st, err := sender.js.Stream(ctx, sender.InboxStream())
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		cfg.RePublish = &jetstream.RePublish{Source: prefix + ".inbox.*.m", Destination: prefix + ".live.{{wildcard(1)}}", HeadersOnly: !full}
		if _, err := sender.js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		recv := open(t, Options{URLs: []string{c.URL(1)}, Prefix: prefix, Replicas: 3})
		if err := recv.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		nc := recv.Conn()
		// The republished headers are a doorbell: one goroutine reads each
		// inbox back from its cursor in direct batch gets, coalescing the
		// doorbells that rang meanwhile (per-inbox order, few requests).
		type bell struct {
			handle string
			seq    uint64
		}
		bells := make(chan bell, 1<<16)
		cursor, want := map[string]uint64{}, map[string]uint64{}
		go func() {
			for b := range bells {
				want[b.handle] = max(want[b.handle], b.seq)
			drain:
				for {
					select {
					case b, ok := <-bells:
						if !ok {
							break drain
						}
						want[b.handle] = max(want[b.handle], b.seq)
					default:
						break drain
					}
				}
				for h, w := range want {
					// Read until the rung sequence is in: a follower
					// answering the direct get may not have it yet.
					for cursor[h] < w {
						msgs, _, err := recv.readDirect(ctx, prefix+".inbox."+h+".>", cursor[h], 500)
						if err != nil {
							t.Errorf("re-read: %v", err)
							return
						}
						for _, m := range msgs {
							record(m.data)
							cursor[h] = m.seq
						}
						if len(msgs) == 0 {
							time.Sleep(time.Millisecond)
						}
					}
				}
			}
		}()
		defer close(bells)
		sub, err := nc.Subscribe(prefix+".live.*", func(m *natsio.Msg) {
			if full {
				record(m.Data)
				return
			}
			seq, _ := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
			bells <- bell{strings.TrimPrefix(m.Subject, prefix+".live."), seq}
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = sub.SetPendingLimits(-1, -1)
		defer sub.Unsubscribe()
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	pad := strings.Repeat("x", max(size-40, 0))
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	const senders = 16
	var next atomic.Int64
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				env := fmt.Appendf(nil, `{"t":%d,"p":"%s"}`, time.Now().UnixNano(), pad)
				if _, _, err := sender.Append(ctx, delivery("alice", env), storage.Limits{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		mu.Lock()
		t.Fatalf("%s: %d of %d delivered", mode, got, n)
	}
	elapsed := time.Since(start)
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Nanosecond
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	return feedResult{
		rate:      float64(n) / elapsed.Seconds(),
		p50:       lat[len(lat)/2],
		p99:       lat[len(lat)*99/100],
		cpuPerMsg: float64(cpu.Microseconds()) / float64(n),
	}
}
