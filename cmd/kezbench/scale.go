package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kezchat/kez/kez"
)

// ScaleReport is scenario 5: how the cost moves as the work grows. Each
// curve runs against a server kezbench starts itself (-caddy), so the
// database holds exactly what the curve put there.
type ScaleReport struct {
	Streams []StreamsPoint `json:"streams"` // send rate and accept latency vs open streams
	Lookups []LookupPoint  `json:"lookups"` // GET /v1/u/{handle} vs registered handles
	Inbox   []InboxPoint   `json:"inbox"`   // inbox page latency vs stored messages
	Startup []StartupPoint `json:"startup"` // startup time and RSS vs database size
	Notes   []string       `json:"notes,omitempty"`
}

// StreamsPoint is scenario 1 (at -scale-duration) with this many streams
// open in all: the senders' recipients' and idle ones.
type StreamsPoint struct {
	Streams     int     `json:"streams"`
	Load        float64 `json:"load_avg_1m_before"`
	MsgsPerSec  float64 `json:"msgs_per_s"`
	ServerCPUus float64 `json:"server_cpu_us_per_msg"` // over the sending window
	ToolCPUus   float64 `json:"tool_cpu_us_per_msg"`
	Accepted    int     `json:"accepted"`
	Accept      Latency `json:"accept_latency"`
	Delivery    Latency `json:"delivery_latency"`
	RSSKiB      int64   `json:"server_rss_kib"` // with the streams open, before sending (after a forced GC and -settle)
	Errors      int     `json:"errors"`
	OK          bool    `json:"exactly_once_no_errors"`
}

// LookupPoint is the latency of looking up random registered handles, one
// request at a time.
type LookupPoint struct {
	Handles int     `json:"handles"`
	Load    float64 `json:"load_avg_1m_before"`
	Latency Latency `json:"latency"`
}

// InboxPoint is the latency of reading one page (100 messages) at a random
// place of an inbox holding Messages messages, one request at a time.
type InboxPoint struct {
	Messages    int     `json:"messages"`
	Load        float64 `json:"load_avg_1m_before"`
	PageLatency Latency `json:"page_latency"`
	FillPerSec  float64 `json:"fill_msgs_per_s"` // the sends that filled it since the last point
	DBBytes     int64   `json:"db_bytes"`
	FillErrors  int     `json:"fill_errors"`
}

// StartupPoint is one restart: from exec to the first healthy answer, and
// the RSS after a forced GC once it is up.
type StartupPoint struct {
	Database  string  `json:"database"` // what is in it
	Label     string  `json:"label"`    // the same, short
	DBBytes   int64   `json:"db_bytes"`
	Load      float64 `json:"load_avg_1m_before"`
	StartupMs float64 `json:"startup_ms"`
	RSSKiB    int64   `json:"rss_kib"`
	AnonKiB   int64   `json:"rss_anon_kib"` // of RSSKiB, the heap and stacks (the rest: mapped files, the database)
}

// pageSize is the inbox page the curve reads: the server's default.
const pageSize = 100

// scale runs scenario 5's curves.
func (b *bench) scale(ctx context.Context) (*ScaleReport, error) {
	rep := &ScaleReport{}
	if len(b.cfg.ScaleStreams)+len(b.cfg.ScaleHandles) > 0 {
		if err := b.usersCurves(ctx, rep); err != nil {
			return rep, err
		}
	}
	if len(b.cfg.ScaleInbox) > 0 {
		if err := b.inboxCurve(ctx, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func (b *bench) startServer(ctx context.Context, name string) (*server, error) {
	srv, err := newServer(b.cfg.Caddy, b.cfg.Caddyfile, filepath.Join(b.cfg.ScaleDir, name), b.cfg.URL)
	if err != nil {
		return nil, err
	}
	if _, err := srv.start(ctx); err != nil {
		srv.close()
		return nil, err
	}
	return srv, nil
}

// restart stops srv and starts it again, timing the start, and reads its
// settled RSS.
func (b *bench) restart(ctx context.Context, srv *server, what, label string) (StartupPoint, error) {
	srv.stop()
	p := StartupPoint{Database: what, Label: label, DBBytes: srv.dbBytes(), Load: loadAvg()}
	took, err := srv.start(ctx)
	if err != nil {
		return p, err
	}
	p.StartupMs = ms(took)
	m, err := b.settledRSS(ctx, srv.pid(), b.cfg.Admin)
	p.RSSKiB, p.AnonKiB = m.rss, m.anon
	b.log("  restart with %s (%.1f MiB): healthy after %.0f ms, RSS %d KiB (anonymous %d KiB)", what, float64(p.DBBytes)/(1<<20), p.StartupMs, p.RSSKiB, p.AnonKiB)
	return p, err
}

// usersCurves registers users on one server up to the largest point of the
// streams and handles curves, measuring each curve at its points on the way.
func (b *bench) usersCurves(ctx context.Context, rep *ScaleReport) error {
	srv, err := b.startServer(ctx, "users")
	if err != nil {
		return err
	}
	defer srv.close()
	f, err := newFleet(ctx, b.cfg.URL, b.cfg.Senders)
	if err != nil {
		return err
	}
	sizes := slices.Concat(b.cfg.ScaleStreams, b.cfg.ScaleHandles)
	slices.Sort(sizes)
	sizes = slices.Compact(sizes)
	for _, n := range sizes {
		if slices.Contains(b.cfg.ScaleStreams, n) && n+1000 > b.cfg.FileLimit {
			// Server and tool each hold a descriptor per stream.
			note := fmt.Sprintf("%d streams skipped: the server and the tool each need one open file per stream, and the limit here is %d (ulimit -Hn)", n, b.cfg.FileLimit)
			rep.Notes = append(rep.Notes, note)
			b.log("  %s", note)
			if !slices.Contains(b.cfg.ScaleHandles, n) {
				continue
			}
		}
		b.log("scenario 5: %d users", n)
		start := time.Now()
		if err := f.ensure(ctx, n, b.progress("registered")); err != nil {
			return err
		}
		b.log("  registered up to %d in %s", n, time.Since(start).Round(time.Millisecond))
		if slices.Contains(b.cfg.ScaleHandles, n) {
			p, err := b.lookups(ctx, f, n)
			if err != nil {
				return err
			}
			rep.Lookups = append(rep.Lookups, p)
			b.log("  lookups among %d handles: p50 %.2f ms, p99 %.2f ms", n, p.Latency.P50, p.Latency.P99)
		}
		if slices.Contains(b.cfg.ScaleStreams, n) && n+1000 <= b.cfg.FileLimit {
			p, err := b.streamsPoint(ctx, f, n, srv.pid())
			if err != nil {
				return err
			}
			rep.Streams = append(rep.Streams, p)
			b.log("  %d streams: %.0f msg/s, accept p99 %.1f ms, server %.0f µs/msg, tool %.0f µs/msg, RSS %d KiB",
				n, p.MsgsPerSec, p.Accept.P99, p.ServerCPUus, p.ToolCPUus, p.RSSKiB)
		}
	}
	p, err := b.restart(ctx, srv, strconv.Itoa(len(f.users))+" users", count(len(f.users))+" users")
	rep.Startup = append(rep.Startup, p)
	return err
}

// lookups times GET /v1/u/{handle} of random handles among the first n.
func (b *bench) lookups(ctx context.Context, f *fleet, n int) (LookupPoint, error) {
	p := LookupPoint{Handles: n, Load: loadAvg()}
	lat := make([]time.Duration, 0, b.cfg.ScaleSamples)
	for range b.cfg.ScaleSamples {
		h := f.users[rand.IntN(n)].handle
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url+"/v1/u/"+h, nil)
		if err != nil {
			return p, err
		}
		start := time.Now()
		resp, err := f.sendHTTP.Do(req)
		if err != nil {
			return p, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(start))
		if resp.StatusCode != http.StatusOK {
			return p, fmt.Errorf("GET /v1/u/%s: HTTP %d", h, resp.StatusCode)
		}
	}
	p.Latency = summarize(lat)
	return p, nil
}

// streamsPoint opens idle streams for users beyond the senders, so that n
// streams are open with the senders' own, and runs scenario 1 for
// -scale-duration.
func (b *bench) streamsPoint(ctx context.Context, f *fleet, n, pid int) (StreamsPoint, error) {
	senders := min(b.cfg.Senders, n)
	p := StreamsPoint{Streams: n}
	var idle *streams
	if n > senders {
		var err error
		idle, err = openStreams(ctx, f.users[senders:n], newTracker(), 256, b.cfg.OpenTimeout)
		if err != nil {
			return p, err
		}
		defer idle.close()
	}
	m, err := b.settledRSS(ctx, pid, b.cfg.Admin)
	if err != nil {
		return p, err
	}
	p.RSSKiB = m.rss
	r := &Result{}
	saved, savedPID := b.cfg.Duration, b.pid
	b.cfg.Duration, b.pid = b.cfg.ScaleDuration, pid
	err = b.maxRate(ctx, r, f, senders, b.cfg.EnvelopeSize, b.cfg.ScaleMaxMessages)
	b.cfg.Duration, b.pid = saved, savedPID
	p.Load, p.MsgsPerSec, p.Accepted = r.Load, r.MsgsPerSec, r.Accepted
	p.ServerCPUus, p.ToolCPUus = r.ServerCPUus, r.ToolCPUus
	p.Accept, p.Delivery, p.Errors, p.OK = r.Accept, r.DeliveryLat, r.Errors, r.OK()
	return p, err
}

// inboxCurve fills one inbox on a fresh server up to each point, reads
// pages of it, and restarts the server to time startup at that size.
func (b *bench) inboxCurve(ctx context.Context, rep *ScaleReport) error {
	srv, err := b.startServer(ctx, "inbox")
	if err != nil {
		return err
	}
	defer srv.close()
	p, err := b.restart(ctx, srv, "empty", "empty")
	if err != nil {
		return err
	}
	rep.Startup = append(rep.Startup, p)
	senders := b.cfg.Senders
	f, err := newFleet(ctx, b.cfg.URL, senders)
	if err != nil {
		return err
	}
	if err := f.ensure(ctx, senders+1, nil); err != nil {
		return err
	}
	to, from := f.users[0], f.users[1:senders+1]
	for _, s := range from { // contacts, so their messages are not capped requests
		if err := to.c.Accept(ctx, s.keys.Primary()); err != nil {
			return err
		}
	}
	sizes := slices.Clone(b.cfg.ScaleInbox)
	slices.Sort(sizes)
	stored := 0
	for _, m := range slices.Compact(sizes) {
		b.log("scenario 5: one inbox of %d messages", m)
		start := time.Now()
		got, errs, err := b.fill(ctx, f, to, from, m-stored)
		if err != nil {
			return err
		}
		pt := InboxPoint{Messages: stored + got, FillErrors: errs}
		pt.FillPerSec = float64(got) / time.Since(start).Seconds()
		stored += got
		b.log("  filled to %d at %.0f msg/s (%d errors)", stored, pt.FillPerSec, errs)
		pt.Load = loadAvg()
		if pt.PageLatency, err = b.readPages(ctx, to, stored); err != nil {
			return err
		}
		pt.DBBytes = srv.dbBytes()
		rep.Inbox = append(rep.Inbox, pt)
		b.log("  page of %d at a random place: p50 %.2f ms, p99 %.2f ms", pageSize, pt.PageLatency.P50, pt.PageLatency.P99)
		sp, err := b.restart(ctx, srv, strconv.Itoa(stored)+" messages in one inbox", count(stored)+" msgs")
		rep.Startup = append(rep.Startup, sp)
		if err != nil {
			return err
		}
	}
	return nil
}

// fill sends n distinct 1 KiB envelopes to to, spread over the senders,
// sealed and signed as they go (filling is not what is measured). It
// returns how many the server accepted and how many failed.
func (b *bench) fill(ctx context.Context, f *fleet, to *user, from []*user, n int) (int, int, error) {
	var next, accepted, failed atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for _, s := range from {
		wg.Go(func() {
			link, err := s.keys.LinkTo(to.keys.Primary())
			var textLen int
			addr := kez.Address(s.handle, f.server)
			if err == nil {
				_, textLen, err = sizeText(link, addr, b.cfg.EnvelopeSize)
			}
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				return
			}
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				env, err := sealText(link, addr, textLen)
				if err != nil {
					failed.Add(1)
					continue
				}
				sb := sendBody(to.handle, env)
				req := kez.Request{Server: f.server, Method: "POST", Path: "/v1/messages", Body: sb.body}
				pctx, cancel := context.WithTimeout(ctx, b.cfg.RequestTimeout)
				_, err = s.send.PostSigned(pctx, sb.body, req.Sign(s.keys.Private(), time.Now()))
				cancel()
				if err != nil {
					failed.Add(1)
					continue
				}
				accepted.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	return int(accepted.Load()), int(failed.Load()), ctx.Err()
}

// readPages times reading a page at a random place of to's inbox of
// stored messages (seqs 1..stored), one request at a time, and checks each
// page is full (or the inbox's tail).
func (b *bench) readPages(ctx context.Context, to *user, stored int) (Latency, error) {
	lat := make([]time.Duration, 0, b.cfg.ScaleSamples)
	for range b.cfg.ScaleSamples {
		since := uint64(rand.IntN(max(stored-pageSize, 0) + 1))
		start := time.Now()
		page, err := to.c.Inbox(ctx, since, pageSize)
		lat = append(lat, time.Since(start))
		if err != nil {
			return Latency{}, err
		}
		want := min(pageSize, stored-int(since))
		if len(page.Messages) != want || (want > 0 && page.Messages[0].Seq != since+1) {
			return Latency{}, fmt.Errorf("inbox page after seq %d: %d messages, want %d from seq %d", since, len(page.Messages), want, since+1)
		}
	}
	return summarize(lat), nil
}
