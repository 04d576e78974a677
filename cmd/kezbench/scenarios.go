package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kezchat/kez/client"
)

// Result is one scenario's figures. Fields that do not apply are omitted.
type Result struct {
	ID      string  `json:"id"` // "1", "1-naive", "2", "3", "4"
	Name    string  `json:"name"`
	URL     string  `json:"url"`
	Load    float64 `json:"load_avg_1m_before"` // of the whole machine
	Elapsed float64 `json:"elapsed_s"`

	Senders       int `json:"senders,omitempty"`
	EnvelopeBytes int `json:"envelope_bytes,omitempty"`
	Attempts      int `json:"attempts,omitempty"`
	Accepted      int `json:"accepted"`

	MsgsPerSec float64 `json:"msgs_per_s,omitempty"`
	// CPU per accepted message over the sending window (/proc/PID/stat
	// of the server, with -pid; getrusage of the tool).
	ServerCPUus float64 `json:"server_cpu_us_per_msg,omitempty"`
	ToolCPUus   float64 `json:"tool_cpu_us_per_msg,omitempty"`
	MiBPerSec   float64 `json:"mib_per_s,omitempty"`
	Accept      Latency `json:"accept_latency"`
	DeliveryLat Latency `json:"delivery_latency"` // POST accepted → SSE received

	// Fixed rate (scenario 2).
	TargetRate int     `json:"target_rate,omitempty"`
	Recipients int     `json:"recipients,omitempty"`
	MaxLagMs   float64 `json:"max_start_lag_ms,omitempty"` // how late the tool started a scheduled send

	// Idle streams (scenario 3).
	Streams         int     `json:"streams,omitempty"`
	StreamProtocol  string  `json:"stream_protocol,omitempty"` // as the server answered the stream client
	RSSBeforeKiB    int64   `json:"rss_before_kib,omitempty"`
	RSSAfterKiB     int64   `json:"rss_after_kib,omitempty"`
	RSSPerStreamKiB float64 `json:"rss_per_stream_kib,omitempty"`
	AnonPerStream   float64 `json:"rss_anon_per_stream_kib,omitempty"`

	// AlreadyStored counts sends answered 200 with an earlier receipt: the
	// client sent them again after a lost answer (SPEC §2.5).
	AlreadyStored int `json:"already_stored,omitempty"`

	// SignSeconds is how long signing the sends took, before the clock
	// started; SignedLate counts sends signed while the clock ran, because
	// their pre-made signature would have been too old (a -duration longer
	// than the server's auth_skew allows).
	SignSeconds float64 `json:"sign_s,omitempty"`
	SignedLate  int     `json:"signed_late,omitempty"`

	Delivery   Delivery       `json:"delivery"`
	Errors     int            `json:"errors"`
	ErrorCodes map[string]int `json:"error_codes,omitempty"`
	Reconnects int            `json:"stream_reconnects"`
	Note       string         `json:"note,omitempty"`
}

// OK reports zero errors and exactly-once delivery.
func (r *Result) OK() bool { return r.Errors == 0 && r.Delivery.OK() }

// errCount counts failed requests by error code.
type errCount struct {
	mu    sync.Mutex
	n     int
	codes map[string]int
}

func (e *errCount) add(err error) {
	code := client.CodeOf(err)
	var netErr *client.NetworkError
	switch {
	case code != "":
	case errors.As(err, &netErr):
		code = "network"
	case errors.Is(err, context.DeadlineExceeded):
		code = "timeout"
	default:
		code = "other"
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.codes == nil {
		e.codes = map[string]int{}
	}
	e.n++
	e.codes[code]++
}

func (e *errCount) into(r *Result) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r.Errors += e.n
	if len(e.codes) > 0 && r.ErrorCodes == nil {
		r.ErrorCodes = map[string]int{}
	}
	for k, v := range e.codes {
		r.ErrorCodes[k] += v
	}
}

// bench runs scenarios with one configuration.
type bench struct {
	cfg Config
	log func(format string, args ...any)
	pid int // the server whose CPU per message maxRate reports (0: none)
}

// post sends the k-th send of p to its recipient users[i], signed by the
// sender as every v2 send is, with the signature made before the clock
// started (pool.sign), and records the receipt in t. The accept latency
// does not include signing, as it does not include sealing.
func (b *bench) post(ctx context.Context, t *tracker, errs *errCount, p *pool, i, k int) (time.Duration, bool) {
	pctx, cancel := context.WithTimeout(ctx, b.cfg.RequestTimeout)
	defer cancel()
	from, to, s := sender(p.users, i), p.users[i], &p.byRecipient[i][k]
	auth := p.auth(i, s)
	start := time.Now()
	rcpt, err := from.send.PostSigned(pctx, s.body, auth)
	at := time.Now()
	if err != nil {
		if ctx.Err() == nil {
			errs.add(err)
		}
		return 0, false
	}
	t.accepted(to, rcpt.Seq, s.env, start, at)
	if rcpt.AlreadyStored {
		t.alreadyStored.Add(1)
	}
	return at.Sub(start), true
}

// finish summarizes the accept latencies (one slice per sender), waits for
// deliveries, checks them, closes the streams and acknowledges everything,
// so the next scenario starts from empty inboxes.
func (b *bench) finish(ctx context.Context, r *Result, t *tracker, st *streams, p *pool, users []*user, accept [][]time.Duration) {
	var all []time.Duration
	for _, l := range accept {
		all = append(all, l...)
	}
	r.Accept = summarize(all)
	t.waitDelivered(b.cfg.DrainTimeout)
	var lat []time.Duration
	r.Delivery, lat = t.verdict()
	r.DeliveryLat = summarize(lat)
	r.Reconnects = int(st.drops.Load())
	r.AlreadyStored = int(t.alreadyStored.Load())
	if r.SignedLate = int(p.signedLate.Load()); r.SignedLate > 0 {
		r.Note = strings.TrimSpace(r.Note + " " + strconv.Itoa(r.SignedLate) +
			" sends were signed while the clock ran: the window outlasted their pre-made signatures (auth_skew)")
	}
	st.close()
	if bad := ackAll(ctx, users, 16); bad > 0 {
		r.Note = strings.TrimSpace(r.Note + " " + strconv.Itoa(bad) + " acknowledgements failed")
	}
}

// prepare registers n users (if the fleet has fewer), makes each accept
// the user who sends to it (so that its messages are not requests), seals
// perLink distinct envelopes of size bytes for each, opens their streams,
// and signs the sends for a sending window of the given length, which
// starts when prepare returns.
func (b *bench) prepare(ctx context.Context, r *Result, f *fleet, n, size, perLink int, window time.Duration) ([]*user, *pool, *tracker, *streams, error) {
	if err := f.ensure(ctx, n, b.progress("registered")); err != nil {
		return nil, nil, nil, nil, err
	}
	users := f.users[:n]
	if int64(n)*int64(perLink)*int64(size) > b.cfg.SealBudget {
		return nil, nil, nil, nil, fmt.Errorf("%d envelopes of %d bytes each would take more than -seal-mib %d", n*perLink, size, b.cfg.SealBudget>>20)
	}
	if err := acceptSenders(ctx, users, 16); err != nil {
		return nil, nil, nil, nil, err
	}
	p, err := sealPool(users, f.server, size, perLink)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	t := newTracker()
	st, err := openStreams(ctx, users, t, 64, b.cfg.OpenTimeout)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	b.signAhead(r, p, window)
	return users, p, t, st, nil
}

// signAhead signs p's sends for a window starting now (pool.sign) and
// reports how long it took.
func (b *bench) signAhead(r *Result, p *pool, window time.Duration) {
	n := 0
	for _, sends := range p.byRecipient {
		n += len(sends)
	}
	took := p.sign(window)
	r.SignSeconds += took.Seconds()
	b.log("  signed %d sends ahead in %.1fs", n, took.Seconds())
}

// maxRate is scenarios 1 and 4 (and 1's naive baseline): senders users each
// post to one recipient back to back for cfg.Duration, until maxMsgs were
// attempted, or until the sender's pre-sealed envelopes run out (there are
// min(maxMsgs, seal budget / size) of them in all). Every recipient's stream
// is open.
func (b *bench) maxRate(ctx context.Context, r *Result, f *fleet, senders, size, maxMsgs int) error {
	r.URL, r.Senders, r.EnvelopeBytes = f.url, senders, size
	total := min(int64(maxMsgs), b.cfg.SealBudget/int64(size))
	perLink := int(max((total+int64(senders)-1)/int64(senders), 1))
	users, p, t, st, err := b.prepare(ctx, r, f, senders, size, perLink, b.cfg.Duration)
	if err != nil {
		return err
	}
	var errs errCount
	var attempts atomic.Int64
	var accepted, sentBytes atomic.Int64
	lats := make([][]time.Duration, senders)
	r.Load = loadAvg()
	cpu := startCPU(b.pid)
	start := time.Now()
	deadline := start.Add(b.cfg.Duration)
	var dry atomic.Int64 // senders that used up their envelopes
	var wg sync.WaitGroup
	for i := range users {
		sends := p.byRecipient[i]
		wg.Go(func() {
			for k := 0; time.Now().Before(deadline) && ctx.Err() == nil; k++ {
				if k == len(sends) {
					dry.Add(1)
					return
				}
				if attempts.Add(1) > int64(maxMsgs) {
					return
				}
				lat, ok := b.post(ctx, t, &errs, p, i, k)
				if !ok {
					time.Sleep(10 * time.Millisecond) // do not spin on a failing server
					continue
				}
				lats[i] = append(lats[i], lat)
				accepted.Add(1)
				sentBytes.Add(int64(len(sends[k].env)))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	r.ServerCPUus, r.ToolCPUus = cpu.perMessage(int(accepted.Load()))
	if n := dry.Load(); n > 0 && attempts.Load() < int64(maxMsgs) && elapsed < b.cfg.Duration {
		r.Note = fmt.Sprintf("%d of %d senders used up their %d pre-sealed envelopes after %.1f s, before the %s of the run (raise -seal-mib)",
			n, senders, perLink, elapsed.Seconds(), b.cfg.Duration)
	}
	r.Elapsed = elapsed.Seconds()
	r.Attempts = int(min(attempts.Load(), int64(maxMsgs)))
	r.Accepted = int(accepted.Load())
	r.MsgsPerSec = float64(r.Accepted) / elapsed.Seconds()
	r.MiBPerSec = float64(sentBytes.Load()) / (1 << 20) / elapsed.Seconds()
	errs.into(r)
	b.finish(ctx, r, t, st, p, users, lats)
	return ctx.Err()
}

// fixedRate is scenario 2: cfg.Rate sends per second for cfg.RateDuration,
// spread round-robin over recipients online users, paced open-loop (a slow
// answer does not delay the next send).
func (b *bench) fixedRate(ctx context.Context, r *Result, f *fleet) error {
	n, rate := b.cfg.Recipients, b.cfg.Rate
	total := int(float64(rate) * b.cfg.RateDuration.Seconds())
	r.URL, r.TargetRate, r.Recipients, r.EnvelopeBytes = f.url, rate, n, b.cfg.EnvelopeSize
	perLink := max((total+n-1)/n, 1) // each envelope is sent once
	users, p, t, st, err := b.prepare(ctx, r, f, n, b.cfg.EnvelopeSize, perLink, b.cfg.RateDuration)
	if err != nil {
		return err
	}
	type job struct {
		i   int
		due time.Time
	}
	jobs := make(chan job, total)
	var errs errCount
	var accepted atomic.Int64
	var maxLag atomic.Int64
	workers := b.cfg.RateWorkers
	lats := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for j := range jobs {
				if lag := int64(time.Since(j.due)); lag > maxLag.Load() {
					maxLag.Store(lag) // racy max is fine for a report
				}
				lat, ok := b.post(ctx, t, &errs, p, j.i%n, j.i/n)
				if ok {
					lats[w] = append(lats[w], lat)
					accepted.Add(1)
				}
			}
		})
	}
	r.Load = loadAvg()
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	r.Attempts = total
	for i := range total {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			r.Attempts = i
			break
		}
		jobs <- job{i, due}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	r.Elapsed = elapsed.Seconds()
	r.Accepted = int(accepted.Load())
	r.MsgsPerSec = float64(r.Accepted) / elapsed.Seconds()
	r.MaxLagMs = ms(time.Duration(maxLag.Load()))
	errs.into(r)
	b.finish(ctx, r, t, st, p, users, lats)
	return ctx.Err()
}

// idleStreams is scenario 3: the server's RSS before and after opening
// cfg.IdleStreams streams (one per user) that then stay idle. Afterwards
// every stream gets one message, to show they were all alive: a message
// request (its sender is not accepted: one request is within the limits,
// and 10,000 acceptances would only lengthen the setup).
func (b *bench) idleStreams(ctx context.Context, r *Result, f *fleet) error {
	n := b.cfg.IdleStreams
	r.URL, r.Streams = f.url, n
	if err := f.ensure(ctx, n, b.progress("registered")); err != nil {
		return err
	}
	users := f.users[:n]
	p, err := sealPool(users, f.server, b.cfg.EnvelopeSize, 1)
	if err != nil {
		return err
	}
	if r.StreamProtocol, err = f.streamProtocol(ctx); err != nil {
		return err
	}
	before, err := b.settledRSS(ctx, b.cfg.PID, b.cfg.Admin)
	if err != nil {
		return err
	}
	r.Load = loadAvg()
	t := newTracker()
	start := time.Now()
	st, err := openStreams(ctx, users, t, 256, b.cfg.OpenTimeout)
	if err != nil {
		return err
	}
	b.log("  %d streams open in %s", n, time.Since(start).Round(time.Millisecond))
	after, err := b.settledRSS(ctx, b.cfg.PID, b.cfg.Admin)
	if err != nil {
		st.close()
		return err
	}
	r.Elapsed = time.Since(start).Seconds()
	if b.cfg.PID > 0 {
		r.RSSBeforeKiB, r.RSSAfterKiB = before.rss, after.rss
		r.RSSPerStreamKiB = float64(after.rss-before.rss) / float64(n)
		r.AnonPerStream = float64(after.anon-before.anon) / float64(n)
	}
	// Every stream must still be live: one message each.
	b.signAhead(r, p, time.Minute)
	var errs errCount
	var next, accepted atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if _, ok := b.post(ctx, t, &errs, p, i, 0); ok {
					accepted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	r.Attempts, r.Accepted = n, int(accepted.Load())
	errs.into(r)
	b.finish(ctx, r, t, st, p, users, nil)
	return ctx.Err()
}

type rss struct{ rss, anon int64 } // KiB

// settledRSS forces a GC in the server pid (through Caddy's admin pprof
// endpoint, when given), lets it settle and reads its memory.
func (b *bench) settledRSS(ctx context.Context, pid int, admin string) (rss, error) {
	if pid <= 0 {
		return rss{}, nil
	}
	if admin != "" {
		if err := serverGC(ctx, admin); err != nil {
			return rss{}, err
		}
	}
	select {
	case <-time.After(b.cfg.Settle):
	case <-ctx.Done():
		return rss{}, ctx.Err()
	}
	return readRSS(pid)
}

// serverGC asks the server for a heap profile with gc=1, which runs a
// garbage collection first.
func serverGC(ctx context.Context, admin string) error {
	u := admin
	if !strings.Contains(u, "://") {
		u = "http://" + u
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(u, "/")+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("forcing a GC through the admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("forcing a GC through the admin endpoint: HTTP %d", resp.StatusCode)
	}
	return nil
}

// readRSS reads VmRSS and RssAnon (KiB) of a process from /proc.
func readRSS(pid int) (rss, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return rss{}, err
	}
	var out rss
	for line := range strings.Lines(string(raw)) {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch name {
		case "VmRSS":
			out.rss = n
		case "RssAnon":
			out.anon = n
		}
	}
	if out.rss == 0 {
		return rss{}, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return out, nil
}

// loadAvg is the 1-minute load average of the machine.
func loadAvg() float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func (b *bench) progress(what string) func(done, total int) {
	return func(done, total int) { b.log("  %s %d/%d users", what, done, total) }
}
