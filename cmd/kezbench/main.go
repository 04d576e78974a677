// Command kezbench is KEZ chat's load tool. Against a running server it
// registers users, opens their streams (SSE) with the Go client library, and
// runs four scenarios:
//
//  1. maximum durable send rate: 1 KiB envelopes, 64 concurrent senders
//     (and, with -baseline, the same against a server whose store commits
//     one transaction per message, reported as a ratio);
//  2. a fixed 1,000 msg/s over 1,000 online recipients: accept latency and
//     POST-accepted → SSE-received delivery latency;
//  3. 10,000 idle streams: the server's RSS per stream (with -pid);
//  4. 256 KiB envelopes at maximum rate;
//  5. scale curves, against servers it starts itself (-caddy): send rate
//     and accept latency vs open streams, lookup latency vs registered
//     handles, inbox page latency vs stored messages, startup time and RSS
//     vs database size; written as JSON and as SVG charts (-charts).
//
// Every send is a v2 send: signed by its sender (SPEC §2.0), to a recipient
// that has accepted the sender as a contact (so it is not a capped message
// request), with an envelope of its own, sealed before the clock starts
// (the server stores an envelope once, SPEC §2.5), and signed before the
// clock starts too, at a timestamp that stays within the server's
// auth_skew (60 s) through the sending window. Every accepted message
// must arrive exactly once on its recipient's stream with the bytes that
// were sent; errors are counted. It prints a table and
// writes the figures as JSON. Every phase is bounded in count and time. See
// BENCHMARKS.md for how to run it and the figures.
//
//	kezbench -url http://127.0.0.1:7480 -baseline http://127.0.0.1:7481 \
//	    -pid $(pgrep -f 'caddy run') -admin 127.0.0.1:7419
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config is everything a run needs; the flags fill it.
type Config struct {
	URL      string // the server under test
	Baseline string // the same server with storage bolt { one_commit_per_message }, or ""
	PID      int    // the server's process id, for RSS (scenario 3)
	Admin    string // Caddy's admin address, to force a GC before reading RSS
	Label    string // names the backend in the report, e.g. "bolt"
	Run      []int  // scenarios to run

	Senders        int           // scenario 1
	EnvelopeSize   int           // scenarios 1-3, bytes as sent
	Duration       time.Duration // scenarios 1 and 4 (and the baseline)
	MaxMessages    int           // cap per max-rate scenario
	Rate           int           // scenario 2, messages per second
	Recipients     int           // scenario 2
	RateDuration   time.Duration // scenario 2
	RateWorkers    int           // scenario 2, concurrent requests at most
	IdleStreams    int           // scenario 3
	H2C            bool          // streams over HTTP/2 without TLS (the server must allow h2c)
	Settle         time.Duration // scenario 3, wait before each RSS reading
	LargeSize      int           // scenario 4, bytes as sent
	LargeSenders   int           // scenario 4
	SealBudget     int64         // bytes of envelopes sealed ahead for one scenario, at most
	DrainTimeout   time.Duration // wait for deliveries after the sends
	OpenTimeout    time.Duration // wait for a scenario's streams to open
	RequestTimeout time.Duration // one send
	Timeout        time.Duration // the whole run

	// Scenario 5: kezbench starts Caddy itself from Caddy with Caddyfile
	// (Caddyfile.scale), its data in a fresh directory under ScaleDir.
	Caddy, Caddyfile, ScaleDir string
	ScaleStreams               []int         // open streams, points of the streams curve
	ScaleHandles               []int         // registered handles, points of the lookup curve
	ScaleInbox                 []int         // messages in one inbox, points of the inbox curve
	ScaleDuration              time.Duration // each streams point's scenario 1
	ScaleMaxMessages           int           // each streams point's scenario 1, at most
	ScaleSamples               int           // lookups and page reads per point
	FileLimit                  int           // open files this process may have (streams points above it are skipped)
}

// DefaultConfig is the full-size run of BENCHMARKS.md.
func DefaultConfig() Config {
	return Config{
		URL: "http://127.0.0.1:7480", Label: "bolt", Run: []int{1, 2, 3, 4},
		Senders: 64, EnvelopeSize: 1024, Duration: 10 * time.Second, MaxMessages: 500_000,
		Rate: 1000, Recipients: 1000, RateDuration: 20 * time.Second, RateWorkers: 128,
		IdleStreams: 10_000, Settle: 5 * time.Second,
		LargeSize: 256 << 10, LargeSenders: 16, SealBudget: 256 << 20,
		DrainTimeout: 30 * time.Second, OpenTimeout: 5 * time.Minute, RequestTimeout: 30 * time.Second,
		Timeout:  30 * time.Minute,
		ScaleDir: "/tmp/kezbench-scale", ScaleStreams: []int{1000, 10_000, 30_000}, ScaleHandles: []int{1000, 100_000},
		ScaleInbox: []int{1000, 100_000, 1_000_000}, ScaleDuration: 5 * time.Second, ScaleMaxMessages: 64_000,
		ScaleSamples: 500, FileLimit: 1 << 20,
	}
}

// Report is the JSON output.
type Report struct {
	Label    string       `json:"label"`
	Started  time.Time    `json:"started"`
	Machine  Machine      `json:"machine"`
	Config   any          `json:"config"`
	Results  []*Result    `json:"results"`
	Scale    *ScaleReport `json:"scale,omitempty"`                 // scenario 5
	Ratio    float64      `json:"group_commit_vs_naive,omitempty"` // scenario 1 rate / naive rate
	OK       bool         `json:"ok"`                              // zero errors, exactly-once everywhere
	Problems []string     `json:"problems,omitempty"`
}

// Machine describes where the load tool ran (the server shares it).
type Machine struct {
	CPUs      int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"` // of kezbench
	MemTotal  string `json:"mem_total"`
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(raw)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(raw))
	}
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(raw)) {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				m.MemTotal = strings.TrimSpace(v)
			}
		}
	}
	return m
}

// Run executes the configured scenarios against the servers. Progress goes
// to logw; the returned error is for setup failures (a scenario's errors
// and lost messages are in the report).
func Run(ctx context.Context, cfg Config, logw io.Writer) (*Report, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	b := &bench{cfg: cfg, pid: cfg.PID, log: func(format string, args ...any) { fmt.Fprintf(logw, format+"\n", args...) }}
	rep := &Report{Label: cfg.Label, Started: time.Now().UTC(), Machine: machine(), Config: cfg}
	if slices.Equal(cfg.Run, []int{5}) {
		// Scenario 5 starts its own servers.
		b.log("scenario 5: scale curves")
		var err error
		rep.Scale, err = b.scale(ctx)
		rep.finish()
		return rep, err
	}
	f, err := newFleet(ctx, cfg.URL, max(cfg.Senders, cfg.LargeSenders))
	if err != nil {
		return nil, err
	}
	if cfg.H2C {
		f.streamHTTP.Transport = newH2CTransport()
		if proto, err := f.streamProtocol(ctx); err != nil || proto != "HTTP/2.0" {
			return nil, fmt.Errorf("-h2c: %s does not speak HTTP/2 without TLS (%s %v); Caddyfile.bench allows it with servers { protocols h1 h2 h2c }", cfg.URL, proto, err)
		}
	}
	var naive *fleet
	if cfg.Baseline != "" && slices.Contains(cfg.Run, 1) {
		if naive, err = newFleet(ctx, cfg.Baseline, cfg.Senders); err != nil {
			return nil, fmt.Errorf("baseline: %w", err)
		}
	}
	type step struct {
		id, name string
		run      func(*Result) error
	}
	var steps []step
	if slices.Contains(cfg.Run, 1) {
		steps = append(steps, step{"1", fmt.Sprintf("max durable rate, %s envelopes, %d senders", size(cfg.EnvelopeSize), cfg.Senders),
			func(r *Result) error {
				return b.maxRate(ctx, r, f, cfg.Senders, cfg.EnvelopeSize, cfg.MaxMessages)
			}})
		if naive != nil {
			steps = append(steps, step{"1-naive", "same, one transaction per message (baseline)",
				func(r *Result) error {
					return b.maxRate(ctx, r, naive, cfg.Senders, cfg.EnvelopeSize, cfg.MaxMessages)
				}})
		}
	}
	if slices.Contains(cfg.Run, 2) {
		steps = append(steps, step{"2", fmt.Sprintf("fixed %d msg/s over %d online recipients", cfg.Rate, cfg.Recipients),
			func(r *Result) error { return b.fixedRate(ctx, r, f) }})
	}
	if slices.Contains(cfg.Run, 3) {
		steps = append(steps, step{"3", fmt.Sprintf("%d idle streams", cfg.IdleStreams),
			func(r *Result) error { return b.idleStreams(ctx, r, f) }})
	}
	if slices.Contains(cfg.Run, 4) {
		steps = append(steps, step{"4", fmt.Sprintf("max rate, %s envelopes, %d senders", size(cfg.LargeSize), cfg.LargeSenders),
			func(r *Result) error {
				return b.maxRate(ctx, r, f, cfg.LargeSenders, cfg.LargeSize, cfg.MaxMessages)
			}})
	}
	for _, s := range steps {
		b.log("scenario %s: %s", s.id, s.name)
		r := &Result{ID: s.id, Name: s.name}
		if err := s.run(r); err != nil {
			return rep, fmt.Errorf("scenario %s: %w", s.id, err)
		}
		rep.Results = append(rep.Results, r)
		b.log("  done in %.1fs: %d accepted, %d errors, delivery ok=%v", r.Elapsed, r.Accepted, r.Errors, r.Delivery.OK())
	}
	rep.finish()
	return rep, nil
}

func (rep *Report) finish() {
	var one, naive *Result
	for _, r := range rep.Results {
		switch r.ID {
		case "1":
			one = r
		case "1-naive":
			naive = r
		}
		if r.Errors > 0 {
			rep.Problems = append(rep.Problems, fmt.Sprintf("scenario %s: %d errors %v", r.ID, r.Errors, r.ErrorCodes))
		}
		if d := r.Delivery; !d.OK() {
			rep.Problems = append(rep.Problems, fmt.Sprintf("scenario %s: not exactly once: %d accepted, %d missing, %d duplicated, %d corrupted, %d unexpected",
				r.ID, d.Accepted, d.Missing, d.Duplicated, d.Corrupted, d.Unexpected))
		}
	}
	if one != nil && naive != nil && naive.MsgsPerSec > 0 {
		rep.Ratio = one.MsgsPerSec / naive.MsgsPerSec
	}
	if sc := rep.Scale; sc != nil {
		for _, p := range sc.Streams {
			if !p.OK {
				rep.Problems = append(rep.Problems, fmt.Sprintf("scenario 5, %d streams: %d errors or not exactly once", p.Streams, p.Errors))
			}
		}
		for _, p := range sc.Inbox {
			if p.FillErrors > 0 {
				rep.Problems = append(rep.Problems, fmt.Sprintf("scenario 5, inbox of %d: %d sends failed while filling", p.Messages, p.FillErrors))
			}
		}
	}
	rep.OK = len(rep.Problems) == 0
}

func size(n int) string {
	if n%1024 == 0 {
		return strconv.Itoa(n/1024) + " KiB"
	}
	return strconv.Itoa(n) + " B"
}

// raiseFileLimit lifts the soft limit on open files to the hard limit:
// 10,000 streams need more than the usual 1,024 descriptors.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, err
		}
	}
	return lim.Cur, nil
}

func main() {
	cfg := DefaultConfig()
	run := "1,2,3,4"
	jsonPath := "kezbench.json"
	flag.StringVar(&cfg.URL, "url", cfg.URL, "the KEZ chat server under test (loopback)")
	flag.StringVar(&cfg.Baseline, "baseline", "", "a server whose store commits one transaction per message (storage bolt { one_commit_per_message }), for scenario 1's naive baseline")
	flag.IntVar(&cfg.PID, "pid", 0, "the server's process id, to read its RSS for scenario 3")
	flag.StringVar(&cfg.Admin, "admin", "", "Caddy's admin address (e.g. 127.0.0.1:2019), to force a GC before each RSS reading")
	flag.StringVar(&cfg.Label, "label", cfg.Label, "the storage backend, as named in the report")
	flag.StringVar(&run, "run", run, "scenarios to run, comma-separated")
	flag.StringVar(&jsonPath, "json", jsonPath, "write the report as JSON here (\"\" for none)")
	flag.IntVar(&cfg.Senders, "senders", cfg.Senders, "scenario 1: concurrent senders")
	flag.IntVar(&cfg.EnvelopeSize, "size", cfg.EnvelopeSize, "scenarios 1-3: envelope size as sent, bytes")
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "scenarios 1 and 4: how long to send")
	flag.IntVar(&cfg.MaxMessages, "max-messages", cfg.MaxMessages, "scenarios 1 and 4: at most this many sends")
	flag.IntVar(&cfg.Rate, "rate", cfg.Rate, "scenario 2: messages per second")
	flag.IntVar(&cfg.Recipients, "recipients", cfg.Recipients, "scenario 2: online recipients")
	flag.DurationVar(&cfg.RateDuration, "rate-duration", cfg.RateDuration, "scenario 2: how long to send")
	flag.IntVar(&cfg.IdleStreams, "streams", cfg.IdleStreams, "scenario 3: idle streams (one user each)")
	flag.BoolVar(&cfg.H2C, "h2c", false, "open streams over HTTP/2 without TLS (h2c; Caddyfile.bench allows it) instead of HTTP/1.1")
	flag.DurationVar(&cfg.Settle, "settle", cfg.Settle, "scenario 3: wait before each RSS reading")
	flag.IntVar(&cfg.LargeSize, "large-size", cfg.LargeSize, "scenario 4: envelope size as sent, bytes")
	flag.IntVar(&cfg.LargeSenders, "large-senders", cfg.LargeSenders, "scenario 4: concurrent senders")
	sealMiB := flag.Int64("seal-mib", cfg.SealBudget>>20, "MiB of distinct envelopes sealed before a scenario starts, at most (each is sent once; scenarios 1 and 4 end early when theirs run out)")
	flag.DurationVar(&cfg.DrainTimeout, "drain", cfg.DrainTimeout, "wait at most this long for deliveries after sending")
	flag.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "give up on the whole run after this long")
	cpuProfile := flag.String("cpuprofile", "", "write kezbench's own CPU profile here (the load tool shares the CPUs with the server)")
	flag.StringVar(&cfg.Caddy, "caddy", "", "scenario 5: the caddy binary to start (built from ./cmd/caddy)")
	flag.StringVar(&cfg.Caddyfile, "caddyfile", "cmd/kezbench/Caddyfile.scale", "scenario 5: the server's Caddyfile; its site must be -url and its admin -admin")
	flag.StringVar(&cfg.ScaleDir, "scale-dir", cfg.ScaleDir, "scenario 5: the servers' data go under this directory (emptied first)")
	streamsList := flag.String("scale-streams", ints(cfg.ScaleStreams), "scenario 5: open streams at each point of the streams curve")
	handlesList := flag.String("scale-handles", ints(cfg.ScaleHandles), "scenario 5: registered handles at each point of the lookup curve")
	inboxList := flag.String("scale-inbox", ints(cfg.ScaleInbox), "scenario 5: messages in one inbox at each point of the inbox curve")
	flag.DurationVar(&cfg.ScaleDuration, "scale-duration", cfg.ScaleDuration, "scenario 5: how long each streams point sends")
	flag.IntVar(&cfg.ScaleMaxMessages, "scale-max-messages", cfg.ScaleMaxMessages, "scenario 5: each streams point sends at most this many (all sealed ahead)")
	flag.IntVar(&cfg.ScaleSamples, "scale-samples", cfg.ScaleSamples, "scenario 5: lookups and page reads per point")
	chartsDir := flag.String("charts", "", "scenario 5: write its curves as SVG charts into this directory")
	chartsFrom := flag.String("charts-from", "", "only render the charts (-charts) of scenario 5 from this earlier -json report")
	flag.Parse()
	if flag.NArg() > 0 {
		// Flags stop at the first argument: "-pid $(pgrep caddy)" naming two
		// processes would silently drop every flag after it.
		fmt.Fprintf(os.Stderr, "kezbench: unexpected argument %q: kezbench takes flags only (does -pid name more than one process?)\n", flag.Arg(0))
		os.Exit(2)
	}
	if *chartsFrom != "" {
		os.Exit(renderOnly(*chartsFrom, *chartsDir))
	}
	cfg.SealBudget = *sealMiB << 20
	var err error
	if cfg.Run, err = parseInts(run); err != nil || len(cfg.Run) == 0 ||
		slices.ContainsFunc(cfg.Run, func(n int) bool { return n < 1 || n > 5 }) ||
		(slices.Contains(cfg.Run, 5) && len(cfg.Run) > 1) {
		fmt.Fprintf(os.Stderr, "kezbench: -run %q: scenarios are 1, 2, 3, 4, or 5 alone\n", run)
		os.Exit(2)
	}
	for _, l := range []struct {
		dst  *[]int
		name string
		val  string
	}{{&cfg.ScaleStreams, "scale-streams", *streamsList}, {&cfg.ScaleHandles, "scale-handles", *handlesList}, {&cfg.ScaleInbox, "scale-inbox", *inboxList}} {
		if *l.dst, err = parseInts(l.val); err != nil {
			fmt.Fprintf(os.Stderr, "kezbench: -%s %q: %v\n", l.name, l.val, err)
			os.Exit(2)
		}
	}
	if slices.Contains(cfg.Run, 5) {
		if cfg.Caddy == "" {
			fmt.Fprintln(os.Stderr, "kezbench: -run 5 needs -caddy, the caddy binary it starts (and -admin for RSS)")
			os.Exit(2)
		}
		if err := os.RemoveAll(cfg.ScaleDir); err != nil {
			fmt.Fprintf(os.Stderr, "kezbench: -scale-dir: %v\n", err)
			os.Exit(2)
		}
	}
	if n, err := raiseFileLimit(); err != nil {
		fmt.Fprintf(os.Stderr, "kezbench: raising the open-file limit: %v\n", err)
	} else if cfg.FileLimit = int(min(n, 1<<30)); slices.Contains(cfg.Run, 3) && n < uint64(cfg.IdleStreams)+1000 {
		fmt.Fprintf(os.Stderr, "kezbench: warning: only %d open files allowed; %d streams need more (raise the hard limit: ulimit -Hn)\n", n, cfg.IdleStreams)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "kezbench: -cpuprofile: %v\n", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := Run(ctx, cfg, os.Stderr)
	if rep != nil {
		printTable(os.Stdout, rep)
		if jsonPath != "" {
			raw, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(jsonPath, append(raw, '\n'), 0o644); werr != nil {
				fmt.Fprintf(os.Stderr, "kezbench: %v\n", werr)
			}
		}
		if rep.Scale != nil && *chartsDir != "" {
			if _, cerr := writeCharts(*chartsDir, rep.Scale); cerr != nil {
				fmt.Fprintf(os.Stderr, "kezbench: charts: %v\n", cerr)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kezbench: %v\n", err)
		exit(1)
	}
	if !rep.OK {
		fmt.Fprintf(os.Stderr, "kezbench: problems:\n  %s\n", strings.Join(rep.Problems, "\n  "))
		exit(1)
	}
}

// renderOnly writes the charts of the scenario 5 report in jsonPath into
// dir and returns the exit status.
func renderOnly(jsonPath, dir string) int {
	raw, err := os.ReadFile(jsonPath)
	var rep Report
	if err == nil {
		err = json.Unmarshal(raw, &rep)
	}
	if err == nil && rep.Scale == nil {
		err = fmt.Errorf("no scenario 5 in it")
	}
	if err == nil && dir == "" {
		err = fmt.Errorf("-charts names no directory")
	}
	var paths []string
	if err == nil {
		paths, err = writeCharts(dir, rep.Scale)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kezbench: -charts-from %s: %v\n", jsonPath, err)
		return 1
	}
	fmt.Println(strings.Join(paths, "\n"))
	return 0
}

// parseInts reads "1000,10000" (underscores allowed: 10_000).
func parseInts(list string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func ints(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// exit ends the process after flushing the CPU profile, if one is written.
func exit(code int) {
	pprof.StopCPUProfile()
	os.Exit(code)
}
