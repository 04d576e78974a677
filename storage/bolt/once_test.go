package bolt

import (
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// The record never holds more than its bound: beyond it Once refuses, and
// what has expired makes room again.
func TestOnceBound(t *testing.T) {
	var o onceSet
	o.init(onceShards) // one entry per shard
	key := func(shard, n byte) [32]byte { return [32]byte{shard, n} }
	if fresh, err := o.use(key(3, 1), 100, 0); err != nil || !fresh {
		t.Fatalf("first key: %v %v", fresh, err)
	}
	if fresh, err := o.use(key(3, 1), 100, 50); err != nil || fresh {
		t.Fatalf("replay: %v %v", fresh, err)
	}
	if _, err := o.use(key(3+onceShards, 2), 100, 50); !errors.Is(err, ErrOnceFull) {
		t.Fatalf("beyond the bound: %v", err)
	}
	if fresh, err := o.use(key(4, 2), 100, 50); err != nil || !fresh {
		t.Fatalf("another shard: %v %v", fresh, err)
	}
	// At until, the first key is gone: its slot is free, and it is fresh again.
	if fresh, err := o.use(key(3+onceShards, 2), 200, 100); err != nil || !fresh {
		t.Fatalf("after expiry: %v %v", fresh, err)
	}
	if fresh, err := o.use(key(3, 1), 300, 200); err != nil || !fresh {
		t.Fatalf("expired key again: %v %v", fresh, err)
	}
	if n := len(o.shards[3].m) + len(o.shards[3].heap); n != 2 {
		t.Fatalf("shard holds %d map and heap entries, want 1 each", n)
	}
}

// Against a plain map: any mix of untils, sweeping by heap is exact.
func TestOnceMatchesAMap(t *testing.T) {
	var o onceSet
	o.init(1 << 20)
	model := map[[32]byte]int64{}
	r := rand.New(rand.NewPCG(1, 2))
	now := int64(1000)
	for range 200000 {
		now += r.Int64N(3)
		k := [32]byte{byte(r.IntN(256)), byte(r.IntN(64))}
		until := now + r.Int64N(200) - 20
		u, ok := model[k]
		want := !ok || u <= now
		if want && until > now {
			model[k] = until
		}
		got, err := o.use(k, until, now)
		if err != nil || got != want {
			t.Fatalf("at %d key %x until %d: fresh=%v %v, want %v", now, k[:2], until, got, err, want)
		}
	}
	live := 0
	for _, u := range model {
		if u > now {
			live++
		}
	}
	held := 0
	for i := range o.shards {
		o.shards[i].sweep(now)
		held += len(o.shards[i].m)
		if len(o.shards[i].m) != len(o.shards[i].heap) {
			t.Fatalf("shard %d: %d keys, %d heap entries", i, len(o.shards[i].m), len(o.shards[i].heap))
		}
	}
	if held != live {
		t.Fatalf("holds %d keys, %d are live", held, live)
	}
}

func BenchmarkOnce(b *testing.B) {
	var o onceSet
	o.init(0)
	var seeds atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seeds.Add(1), 7))
		for i := int64(0); pb.Next(); i++ {
			var k [32]byte
			for j := range 4 {
				k[j] = byte(r.Uint32())
			}
			now := i * 1e6 // each goroutine at 1000 requests/s, kept 2 minutes
			if _, err := o.use(k, now+120e9, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}
