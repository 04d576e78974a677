package handlers

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rate allows N events per Per for each key, with bursts of up to N. The
// zero Rate means no limit.
type Rate struct {
	N   int
	Per time.Duration
}

// ParseRate reads "20/1m" (20 per minute) or "off".
func ParseRate(s string) (Rate, error) {
	if s == "off" {
		return Rate{}, nil
	}
	n, per, ok := strings.Cut(s, "/")
	count, err := strconv.Atoi(n)
	if !ok || err != nil || count <= 0 {
		return Rate{}, fmt.Errorf("%q is not a rate such as 20/1m or off", s)
	}
	d, err := time.ParseDuration(per)
	if err != nil || d <= 0 {
		return Rate{}, fmt.Errorf("%q is not a rate such as 20/1m or off", s)
	}
	return Rate{N: count, Per: d}, nil
}

func (r Rate) String() string {
	if r.N == 0 {
		return "off"
	}
	return strconv.Itoa(r.N) + "/" + r.Per.String()
}

// RateState is what the rate limits remember: a token bucket per client for
// each limit (registrations, sends per address, sends per sender key). A
// Handler has its own unless Config.RateState names one. A host that builds
// a new Handler on every configuration reload (Caddy's module) passes the
// same RateState to each, so that a reload does not hand every client a full
// allowance again; the new configuration's rates apply to the kept buckets.
type RateState struct {
	register, send, sender, federation buckets
}

// NewRateState returns an empty RateState: every client starts with a full
// bucket.
func NewRateState() *RateState { return &RateState{} }

// buckets are token buckets by key (a client IP or a sender key). Buckets
// that have refilled are swept, so memory follows the number of recently
// active keys.
type buckets struct {
	mu        sync.Mutex
	m         map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// limiter applies one configuration's Rate to buckets that may outlive it.
type limiter struct {
	rate Rate
	b    *buckets
}

func newLimiter(r Rate, b *buckets) *limiter { return &limiter{rate: r, b: b} }

// allow takes a token for key, or says how long until one is available.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	if l == nil || l.rate.N == 0 {
		return true, 0
	}
	perToken := float64(l.rate.Per) / float64(l.rate.N)
	full := float64(l.rate.N)
	b := l.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]*bucket{}
	}
	if now.Sub(b.lastSweep) > l.rate.Per {
		b.sweep(now, perToken, full)
	}
	k := b.m[key]
	if k == nil {
		k = &bucket{tokens: full, last: now}
		b.m[key] = k
	}
	// A reload may have lowered the rate: a bucket never holds more than
	// the current burst.
	k.tokens = math.Min(full, k.tokens+float64(now.Sub(k.last))/perToken)
	k.last = now
	if k.tokens >= 1 {
		k.tokens--
		return true, 0
	}
	return false, time.Duration((1 - k.tokens) * perToken)
}

func (b *buckets) sweep(now time.Time, perToken, full float64) {
	b.lastSweep = now
	for key, k := range b.m {
		if k.tokens+float64(now.Sub(k.last))/perToken >= full {
			delete(b.m, key)
		}
	}
}

// RemoteIP is the default client identity for rate limits: the peer address.
// Behind a proxy, configure ClientIP instead (Caddy's trusted_proxies).
func RemoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limitKey is the rate-limit identity of a client address: an IPv4 address
// as is, an IPv6 address by its /64, since any IPv6 host holds a whole /64.
func limitKey(addr string) string {
	ip := net.ParseIP(addr)
	if ip == nil || ip.To4() != nil {
		return addr
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// streamSlots counts open streams, per handle and in total.
type streamSlots struct {
	mu        sync.Mutex
	perHandle map[string]int
	total     int
}

// take reserves a slot; ok=false when a limit (0 = none) is reached.
func (s *streamSlots) take(handle string, maxPerHandle, maxTotal int) (ok bool, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if maxTotal > 0 && s.total >= maxTotal {
		return false, "the server has too many open streams"
	}
	if maxPerHandle > 0 && s.perHandle[handle] >= maxPerHandle {
		return false, "too many open streams for " + handle + " (at most " + strconv.Itoa(maxPerHandle) + ")"
	}
	s.perHandle[handle]++
	s.total++
	return true, ""
}

func (s *streamSlots) release(handle string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.perHandle[handle]--; s.perHandle[handle] <= 0 {
		delete(s.perHandle, handle)
	}
}
