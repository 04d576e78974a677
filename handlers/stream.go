package handlers

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

const (
	// streamWriteTimeout bounds one write to a stream; a client that stops
	// reading is cut off instead of pinning the handler.
	streamWriteTimeout = 15 * time.Second
	// backlogPage is how many stored messages are read per storage call
	// when a stream resumes.
	backlogPage = 100
	// flushAt is how much is buffered before writing even mid-batch.
	flushAt = 64 << 10
)

// serverShutdown returns a context that is done when the http.Server
// carrying r begins to shut down. The request context is not cancelled by a
// graceful shutdown, and Caddy's default grace period is eternal, so streams
// watch this to end promptly on reload and stop.
func (h *Handler) serverShutdown(r *http.Request) context.Context {
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	if srv == nil {
		return context.Background()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ctx, ok := h.servers[srv]
	if !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(context.Background())
		h.servers[srv] = ctx
		srv.RegisterOnShutdown(cancel)
	}
	return ctx
}

// lastEventID reads the Last-Event-ID header an EventSource sends on reconnect.
func lastEventID(r *http.Request) (uint64, bool) {
	s := r.Header.Get("Last-Event-ID")
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 63)
	return n, err == nil
}

// maxAge is how long one stream may live: StreamMaxAge ±10 %, so that the
// streams of a restart do not all end together.
func (h *Handler) maxAge() time.Duration {
	spread := int64(h.cfg.StreamMaxAge / 5)
	if spread <= 0 {
		return h.cfg.StreamMaxAge
	}
	return h.cfg.StreamMaxAge - time.Duration(spread/2) + time.Duration(rand.Int64N(spread+1))
}

// stream serves GET /v1/inbox/<handle>/stream (SPEC §2.7): the stored
// messages after the cursor, then live ones, until the client leaves, the
// stream's time is up, the hub ends it, or the server stops.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request, arg string) error {
	handle, since, err := h.streamRequest(w, r, arg)
	if err != nil {
		return err
	}
	if ok, reason := h.streams.take(handle, h.cfg.MaxStreamsPerHandle, h.cfg.MaxStreams); !ok {
		h.cfg.Counters.rateLimited("streams")
		return tooMany(5*time.Second, reason)
	}
	defer h.streams.release(handle)
	h.cfg.Counters.streamOpened()
	defer h.cfg.Counters.streamClosed()

	s := h.openStream(w, r, handle, since)
	defer s.close()
	if s.replay() {
		s.live()
	}
	return nil
}

// streamRequest authorizes a stream request and returns its handle and
// cursor: the signed since, else Last-Event-ID, which is not signed and so
// counts only when the signed query names no cursor (SPEC §2.7).
func (h *Handler) streamRequest(w http.ResponseWriter, r *http.Request, arg string) (string, uint64, error) {
	q, query, urlAuth, err := kez.ParseQuery(r.URL.RawQuery, true, "since")
	if err != nil {
		return "", 0, err
	}
	since, signedSince := q["since"]
	if id, ok := lastEventID(r); ok && !signedSince {
		since = id
	}
	rec, err := h.authorizeOwner(r, arg, kez.CodeMissingAuth, func(handle string) signedRequest {
		req := ownerRequest(r, handle, "/stream", query)
		if req.auth == "" {
			req.auth = urlAuth // for EventSource, which cannot set headers
		}
		return req
	})
	if err != nil {
		return "", 0, err
	}
	return rec.Handle, since, nil
}

// sseStream is an open stream: it writes Server-Sent Events, buffered, and
// remembers the first error.
type sseStream struct {
	h        *Handler
	r        *http.Request
	handle   string
	shutdown context.Context // done when the server carrying r begins to shut down
	sub      *hub.Subscription
	cursor   uint64 // the seq of the last event written

	w       http.ResponseWriter
	rc      *http.ResponseController
	buf     []byte
	err     error
	writeBy time.Time // the write deadline flush last set

	stops  []func() bool // unregister the cuts
	mu     sync.Mutex    // orders a cut and close's reset of the write deadline
	closed bool
}

// openStream subscribes to handle's events and answers 200 with the
// stream's headers. Close it when done.
func (h *Handler) openStream(w http.ResponseWriter, r *http.Request, handle string, since uint64) *sseStream {
	s := &sseStream{h: h, r: r, handle: handle, cursor: since, w: w, rc: http.NewResponseController(w),
		// Watch for shutdown before anything is written, so that a
		// shutdown beginning from here on is seen.
		shutdown: h.serverShutdown(r),
		// Subscribe before reading storage: whatever commits from now on
		// is in the subscription, whatever committed before is in storage;
		// duplicates between the two are dropped by seq (send).
		sub: h.hub.Subscribe(handle)}
	// A reason to stop is checked between writes (ended), and a write
	// that is blocked on a slow reader is cut short when one arrives
	// (context.AfterFunc: no goroutine per stream), so no stream, however
	// long its backlog, holds up a reload or shutdown.
	for _, ctx := range []context.Context{r.Context(), s.shutdown, h.stopped} {
		s.stops = append(s.stops, context.AfterFunc(ctx, s.cut))
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return s
}

// ended reports a reason to stop: the client left, the server is shutting
// down, or the handler is closed.
func (s *sseStream) ended() bool {
	return s.r.Context().Err() != nil || s.shutdown.Err() != nil || s.h.stopped.Err() != nil
}

// cut ends a write blocked on a slow reader, unless the stream is closed.
func (s *sseStream) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		_ = s.rc.SetWriteDeadline(time.Now())
	}
}

// close stops the cuts, then clears the write deadline, for the
// connection may serve other requests: a cut that was already running is
// finished first, or refused, and cannot set a deadline after the reset.
func (s *sseStream) close() {
	for _, stop := range s.stops {
		stop()
	}
	s.mu.Lock()
	s.closed = true
	_ = s.rc.SetWriteDeadline(time.Time{})
	s.mu.Unlock()
	s.h.hub.Unsubscribe(s.sub)
}

// replay writes the retry field and the stored messages after the cursor,
// a page at a time. It returns false when the stream is to end.
func (s *sseStream) replay() bool {
	s.buf = append(s.buf, "retry: 3000\n\n"...)
	if !s.flush() {
		return false
	}
	for more := true; more; {
		if s.ended() {
			return false
		}
		var msgs []storage.Message
		var err error
		msgs, more, err = s.h.readPage(s.r, s.handle, s.cursor, backlogPage)
		if err != nil {
			s.h.log.Warn("stream backlog read failed", "handle", s.handle, "error", err)
			return false
		}
		for _, m := range msgs {
			if !s.send(m.Seq, EncodeMessage(m)) {
				return false
			}
		}
		if !s.flush() {
			return false
		}
	}
	return true
}

// live writes the hub's events as they come, and a ping after each
// Keepalive of silence, until the stream is to end.
func (s *sseStream) live() {
	keepalive := s.h.cfg.Keepalive
	ping := time.NewTimer(keepalive)
	defer ping.Stop()
	// One credential is worth one stream for a bounded time: then the
	// client reconnects with a fresh signature (SPEC §2.7).
	expiry := time.NewTimer(s.h.maxAge())
	defer expiry.Stop()
	var evs []hub.Event
	for {
		select {
		case <-s.sub.Ready():
			// Write everything queued, then flush once.
			evs = s.sub.Take(evs[:0])
			for _, ev := range evs {
				if !s.send(ev.Seq, ev.Data) {
					return
				}
			}
			clear(evs) // let the messages go while the stream idles
			if cap(evs) > 8 {
				evs = nil // and the buffer of a burst
			}
			if !s.flush() {
				return
			}
		case <-ping.C:
			s.buf = append(s.buf, ": ping\n\n"...)
			if !s.flush() {
				return
			}
		case <-s.sub.Done():
			// Overflow, the handle's key changed, or the hub shut down:
			// end the response; the client resumes from its last id and
			// storage fills the gap.
			if s.sub.Overflowed() {
				s.h.cfg.Counters.streamOverflowed()
				s.h.log.Debug("stream overflowed: the client reads more slowly than its messages arrive; it resumes from storage",
					"handle", s.handle, "last_id", s.cursor, "buffer", hub.BufferSize)
			}
			return
		case <-expiry.C:
			return
		case <-s.r.Context().Done():
			return
		case <-s.shutdown.Done():
			return
		case <-s.h.stopped.Done():
			return
		}
		// Something was written: the next ping is due after Keepalive
		// of silence from now.
		ping.Reset(keepalive)
	}
}

// send buffers the event of seq unless the cursor is past it (a live event
// that the backlog already had), and writes the buffer once it is large.
// It returns false when the stream is to end.
func (s *sseStream) send(seq uint64, data []byte) bool {
	if seq <= s.cursor {
		return true
	}
	s.buf = append(s.buf, "id: "...)
	s.buf = strconv.AppendUint(s.buf, seq, 10)
	s.buf = append(s.buf, "\nevent: message\ndata: "...)
	s.buf = append(s.buf, data...)
	s.buf = append(s.buf, "\n\n"...)
	s.cursor = seq
	return len(s.buf) < flushAt || s.flush()
}

// flush writes the buffered events and pushes them to the client. It
// returns false when the stream is to end.
func (s *sseStream) flush() bool {
	if s.err != nil || s.ended() {
		return false
	}
	// A deadline still at least half the timeout away stays: setting one
	// is a timer update per event, and a reader that stops is still cut
	// off within streamWriteTimeout. Writers without deadlines have none.
	if now := time.Now(); s.writeBy.Sub(now) < streamWriteTimeout/2 {
		s.writeBy = now.Add(streamWriteTimeout)
		_ = s.rc.SetWriteDeadline(s.writeBy)
	}
	if len(s.buf) > 0 {
		if _, s.err = s.w.Write(s.buf); s.err != nil {
			return false
		}
		if cap(s.buf) > 64<<10 {
			s.buf = nil // don't keep a large backlog buffer for an idle stream
		} else {
			s.buf = s.buf[:0]
		}
	}
	s.err = s.rc.Flush()
	return s.err == nil
}

// streamOverflowed is Counters.StreamOverflowed, when set.
func (c Counters) streamOverflowed() {
	if c.StreamOverflowed != nil {
		c.StreamOverflowed()
	}
}
