package kez

import (
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"time"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// zip215Rules are the verification rules of ZIP-215: the cofactored
// equation [8]([S]B - R - [k]A) == 0, S below the group order, A and R
// decoded even from non-canonical encodings. They accept every signature
// that crypto/ed25519 accepts, and besides those only signatures whose R
// (or A) has a small-order component, which nobody but the key's holder can
// make (R is hashed into k, so a third party cannot add one to a signature
// it saw). Unlike crypto/ed25519's rules they can be checked in batches.
var zip215Rules = &voi.Options{Verify: voi.VerifyOptionsZIP_215}

// AuthVerifier checks the signatures of X-KEZ-Auth (SPEC §2.0) under the
// ZIP-215 rules, in batches when many arrive together: a batch of 8 costs
// about 17 µs per signature against 28 µs for one at a time (BenchmarkAuthVerifier).
//
// Only the server ever checks these signatures, so their rules are its
// choice; what clients check too (registrations, rotations, deletions,
// log entries, envelopes) keeps crypto/ed25519's rules. A
// signature's answer never depends on the others in its batch: a batch
// that fails is checked again one signature at a time under the same
// rules, so the batch only decides how fast the answer comes.
//
// Batching waits: the first signature of a batch waits up to Linger for
// others (the first to arrive leads, the others join and wait for it).
// It only waits while signatures arrive at 2,000 a second or faster
// (authBatchFrom), so a quiet server checks each at once, and not for a second after
// a batch failed, so that forgeries sent to fail every batch cost no more
// than checking each signature alone. Safe for concurrent use.
type AuthVerifier struct {
	keys   *keyCache
	linger time.Duration

	alwaysBatch bool         // BatchAlways
	batches     atomic.Int64 // batches checked as one (Batches)

	mu       sync.Mutex
	open     *authBatch    // the batch that is gathering, nil if none
	calm     time.Time     // no batching before then: a batch failed
	pause    time.Duration // how long after a failure (authFailPause)
	slot     time.Time     // start of the current rate slot
	inSlot   int           // signatures seen in it
	lastSlot int           // signatures seen in the previous slot
}

// DefaultAuthLinger bounds how long a signature waits for batch mates:
// long enough for batches of about 10 at 6,000 sends a second (scenario 1
// of BENCHMARKS.md: 1 ms made batches of about 5, and a lower rate).
const DefaultAuthLinger = 2 * time.Millisecond

// Batching policy: a batch is checked at authBatchTarget signatures (or
// when the leader's wait ends); signatures arriving at fewer than
// authBatchFrom per authRateSlot are checked at once.
const (
	authBatchTarget = 16
	authRateSlot    = 10 * time.Millisecond
	authBatchFrom   = 20 // per slot: 2,000 a second
	authBatchMin    = 3  // smaller batches are checked one by one (a batch of 2 saves nothing)
	authFailPause   = time.Second
)

type authBatch struct {
	jobs []*authJob
	full chan struct{} // closed when the batch reaches authBatchTarget
	done chan struct{} // closed when every job has its answer
}

type authJob struct {
	key      *voi.ExpandedPublicKey
	msg, sig []byte
	ok       bool
}

// NewAuthVerifier returns an AuthVerifier that keeps at most maxKeys keys
// expanded (DefaultAuthKeys when maxKeys <= 0) and lets a signature wait at
// most linger for batch mates (0: no batching).
func NewAuthVerifier(maxKeys int, linger time.Duration) *AuthVerifier {
	return &AuthVerifier{keys: newKeyCache(maxKeys), linger: linger, pause: authFailPause}
}

// Verify reports whether sig is a valid ZIP-215 signature of msg by pub.
func (a *AuthVerifier) Verify(pub ed25519.PublicKey, msg, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		return false
	}
	key := a.keys.expanded(pub)
	if key == nil {
		return false // not a curve point
	}
	a.mu.Lock()
	now := time.Now()
	if now.Sub(a.slot) >= authRateSlot {
		a.lastSlot = a.inSlot
		if now.Sub(a.slot) >= 2*authRateSlot {
			a.lastSlot = 0 // a slot with nothing in it went by
		}
		a.slot, a.inSlot = now, 0
	}
	a.inSlot++
	if a.linger <= 0 || now.Before(a.calm) || (a.lastSlot < authBatchFrom && a.open == nil && !a.alwaysBatch) {
		a.mu.Unlock()
		return voi.VerifyExpandedWithOptions(key, msg, sig, zip215Rules)
	}
	job := &authJob{key: key, msg: msg, sig: sig}
	if b := a.open; b != nil { // join the gathering batch
		b.jobs = append(b.jobs, job)
		if len(b.jobs) == authBatchTarget {
			close(b.full)
			a.open = nil
		}
		a.mu.Unlock()
		<-b.done
		return job.ok
	}
	b := &authBatch{jobs: []*authJob{job}, full: make(chan struct{}), done: make(chan struct{})}
	a.open = b
	a.mu.Unlock()

	t := time.NewTimer(a.linger)
	select {
	case <-b.full:
	case <-t.C:
	}
	t.Stop()
	a.mu.Lock()
	if a.open == b {
		a.open = nil
	}
	jobs := b.jobs
	a.mu.Unlock()
	if len(jobs) >= authBatchMin {
		a.batches.Add(1)
	}
	if !checkBatch(jobs) {
		// Checking a batch again one by one costs about twice what checking
		// each alone would have: a forger must not make everyone pay that in
		// every batch, so after a failure nobody waits for a while.
		a.mu.Lock()
		a.calm = time.Now().Add(a.pause)
		a.mu.Unlock()
	}
	close(b.done)
	return job.ok
}

// BatchAlways makes a wait for batch mates whatever the rate and however
// many batches failed, so that tests can make batches of a few requests,
// forgeries among them.
func (a *AuthVerifier) BatchAlways() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.alwaysBatch, a.pause = true, 0
}

// Batches is how many batches of signatures a has checked as one.
func (a *AuthVerifier) Batches() int64 { return a.batches.Load() }

// batchVerifiers are reused: a BatchVerifier keeps its arrays across Reset.
var batchVerifiers = sync.Pool{New: func() any { return voi.NewBatchVerifierWithCapacity(authBatchTarget) }}

// checkBatch sets every job's answer: all at once when the batch holds,
// else one by one. It reports false when a batch of several failed.
func checkBatch(jobs []*authJob) bool {
	if len(jobs) >= authBatchMin {
		bv := batchVerifiers.Get().(*voi.BatchVerifier)
		defer func() { batchVerifiers.Put(bv.Reset()) }()
		for _, j := range jobs {
			bv.AddExpandedWithOptions(j.key, j.msg, j.sig, zip215Rules)
		}
		if bv.VerifyBatchOnly(rand.Reader) {
			for _, j := range jobs {
				j.ok = true
			}
			return true
		}
	}
	for _, j := range jobs {
		j.ok = voi.VerifyExpandedWithOptions(j.key, j.msg, j.sig, zip215Rules)
	}
	return len(jobs) < authBatchMin
}

// VerifyWith is Verify with the Ed25519 check done by v (ZIP-215 rules,
// batched under load): the same errors, faster under load.
func (r *Request) VerifyWith(v *AuthVerifier, pub ed25519.PublicKey, value string, now time.Time, skew time.Duration) (ts int64, msg []byte, err error) {
	return r.verify(func(msg, sig []byte) bool { return v.Verify(pub, msg, sig) }, value, now, skew)
}
