package nats

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

// TestSendCost measures the durable send path on a 3-node cluster with R3
// streams: 64 senders, each to its own recipient, 1 KiB envelopes, for
// a contact (the common case), for a stranger's request, and for a
// send's store calls (the two lookups and the append, with and without
// the record cache), against a bare publish of the same message (what v1
// cost). It prints messages per second and what each send sends to NATS
// (requests and publishes, waited for or not).
//
//	KEZ_NATS_BENCH=1 go test -run SendCost -v ./storage/nats/
func TestSendCost(t *testing.T) {
	if os.Getenv("KEZ_NATS_BENCH") == "" {
		t.Skip("set KEZ_NATS_BENCH=1 to measure")
	}
	c := natstest.RunCluster(t, 3)
	const senders, size = 64, 1 << 10
	d := 5 * time.Second
	var rows []string
	modes := []string{"bare publish", "message and record in one batch", "contact", "request", "send path", "send path, no record cache"}
	for round, mode := range append(modes, modes...) {
		prefix := fmt.Sprintf("cost%d", round)
		s := open(t, Options{URLs: []string{c.URL(0)}, Prefix: prefix, Replicas: 3, MaxInbox: 10000})
		s.recordCacheOff = mode == "send path, no record cache"
		ctx := context.Background()
		for i := range senders {
			storagetest.Register(t, s, fmt.Sprintf("u%d", i), i)
			if mode == "contact" {
				accept(t, s, fmt.Sprintf("u%d", i))
			}
		}
		if mode == "message and record in one batch" {
			allowBatches(t, s)
		}
		// The send path: u<i> writes to u<i+1>, who accepted it.
		if strings.HasPrefix(mode, "send path") {
			for i := range senders {
				if err := s.SetContact(ctx, fmt.Sprintf("u%d", (i+1)%senders), storagetest.Primary(i), storage.Accept); err != nil {
					t.Fatal(err)
				}
			}
		}
		pad := strings.Repeat("x", size-40)
		// Warm the caches (registry, contact lists) with one send each.
		send := func(i int) error {
			h := fmt.Sprintf("u%d", i)
			env := fmt.Appendf(nil, `{"t":%d,"p":"%s"}`, time.Now().UnixNano(), pad)
			switch mode {
			case "bare publish":
				m := natsio.NewMsg(s.msgSubj(h))
				m.Data = env
				m.Header.Set(jetstream.MsgIDHeader, nuid.Next())
				_, err := s.publish(ctx, m)
				return err
			case "message and record in one batch":
				return batchWithRecord(ctx, s, h, env)
			case "send path", "send path, no record cache":
				return sendPath(ctx, s, i, (i+1)%senders, env)
			case "contact":
				_, _, err := s.Append(ctx, delivery(h, env), storage.Limits{MaxInbox: 10000})
				return err
			default:
				d := storagetest.Delivery(h, 100000+i)
				d.Envelope = env
				_, _, err := s.Append(ctx, d, storage.Limits{MaxInbox: 10000, RequestLimit: 1 << 30, MaxRequests: 1 << 30})
				return err
			}
		}
		for i := range senders {
			if err := send(i); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(200 * time.Millisecond) // records written
		before := s.nc.Stats()
		var n atomic.Int64
		stop := time.Now().Add(d)
		var wg sync.WaitGroup
		for i := range senders {
			wg.Go(func() {
				for time.Now().Before(stop) {
					if err := send(i); err != nil {
						t.Error(err)
						return
					}
					n.Add(1)
				}
			})
		}
		wg.Wait()
		time.Sleep(200 * time.Millisecond)
		after := s.nc.Stats()
		sent := float64(n.Load())
		rows = append(rows, fmt.Sprintf("| %s | %.0f | %.2f |", mode, sent/d.Seconds(), float64(after.OutMsgs-before.OutMsgs)/sent))
		_ = s.Close()
	}
	t.Logf("%d senders, 1 KiB, R3 on 3 in-process nodes, %s each\n| send | msgs/s | messages to NATS per send |\n| --- | --- | --- |\n%s",
		senders, d, strings.Join(rows, "\n"))
}

// sendPath makes the store calls of a send (handlers' send): the
// recipient's lookup, the sender's (by primary), the append.
func sendPath(ctx context.Context, s *Store, from, to int, env []byte) error {
	rec, err := s.Lookup(ctx, fmt.Sprintf("u%d", to))
	if err != nil {
		return err
	}
	sender, err := s.LookupPrimary(ctx, storagetest.Primary(from))
	if err != nil {
		return err
	}
	_, _, err = s.Append(ctx, storage.Delivery{To: rec.Handle, From: sender.Primary, Sig: storagetest.Sig(), Envelope: env,
		SenderHandle: sender.Handle, ToPrimary: rec.Primary}, storage.Limits{MaxInbox: 10000})
	return err
}

// allowBatches lets the inbox stream take atomic batches (it does not).
func allowBatches(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	st, err := s.js.Stream(ctx, s.inboxName)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.AllowAtomicPublish = true
	if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// batchWithRecord stores a message and its idempotency record as one
// atomic batch (one replicated entry): what an Append that wrote its
// record with the message would cost. The record names no seq here.
func batchWithRecord(ctx context.Context, s *Store, handle string, env []byte) error {
	key := idemKey(storagetest.Primary(storagetest.FillSender), storagetest.Sig())
	m := natsio.NewMsg(s.msgSubj(handle))
	m.Data = env
	m.Header.Set(jetstream.MsgIDHeader, handle+"/"+key)
	expect(m, s.recordFilter(handle, key), 0)
	r := natsio.NewMsg(s.doneSubj(handle, key))
	_, err := s.publishBatch(ctx, []*natsio.Msg{m, r})
	return err
}
