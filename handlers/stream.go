package handlers

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
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

func (h *Handler) stream(w http.ResponseWriter, r *http.Request, arg string) {
	q, query, urlAuth, err := kez.ParseQuery(r.URL.RawQuery, true, "since")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	since, signedSince := q["since"]
	// Last-Event-ID is not signed: it only counts when the signed query
	// names no cursor (SPEC §2.7).
	if id, ok := lastEventID(r); ok && !signedSince {
		since = id
	}
	rec, ok := h.authorizeOwner(w, r, arg, http.StatusBadRequest, func(handle string) signedRequest {
		req := ownerRequest(r, handle, "/stream", query)
		if req.auth == "" {
			req.auth = urlAuth // for EventSource, which cannot set headers
		}
		return req
	})
	if !ok {
		return
	}
	handle := rec.Handle

	if ok, reason := h.streams.take(handle, h.cfg.MaxStreamsPerHandle, h.cfg.MaxStreams); !ok {
		h.cfg.Counters.rateLimited("streams")
		rateLimited(w, 5*time.Second, reason)
		return
	}
	defer h.streams.release(handle)
	h.cfg.Counters.streamOpened()
	defer h.cfg.Counters.streamClosed()

	// Watch for shutdown before anything is written, so that a shutdown
	// beginning from here on is seen.
	shutdown := h.serverShutdown(r)

	// Subscribe before reading storage: whatever commits from now on is in
	// the subscription, whatever committed before is in storage; duplicates
	// between the two are dropped by seq below.
	sub := h.hub.Subscribe(handle)
	defer h.hub.Unsubscribe(sub)

	rc := http.NewResponseController(w)
	// ended reports a reason to stop. It is checked between writes, and a
	// write that is blocked on a slow reader is cut short when one arrives
	// (context.AfterFunc: no goroutine per stream), so no stream, however
	// long its backlog, holds up a reload or shutdown.
	ended := func() bool {
		return r.Context().Err() != nil || shutdown.Err() != nil || h.stopped.Err() != nil
	}
	for _, ctx := range []context.Context{r.Context(), shutdown, h.stopped} {
		cancel := context.AfterFunc(ctx, func() { _ = rc.SetWriteDeadline(time.Now()) })
		defer cancel()
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sw := &sseWriter{w: w, rc: rc, ended: ended}
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }() // the connection may serve other requests

	sw.raw("retry: 3000\n\n")
	if !sw.flush() {
		return
	}

	cursor := since
	for more := true; more; {
		if ended() {
			return
		}
		var msgs []storage.Message
		var err error
		msgs, more, err = h.readPage(r, handle, cursor, backlogPage)
		if err != nil {
			h.log.Warn("stream backlog read failed", "handle", handle, "error", err)
			return
		}
		for _, m := range msgs {
			sw.event(m.Seq, EncodeMessage(m))
			cursor = m.Seq
			if len(sw.buf) >= flushAt && !sw.flush() {
				return
			}
		}
		if !sw.flush() {
			return
		}
	}

	ping := time.NewTicker(h.cfg.Keepalive)
	defer ping.Stop()
	// One credential is worth one stream for a bounded time: then the
	// client reconnects with a fresh signature (SPEC §2.7).
	expiry := time.NewTimer(h.maxAge())
	defer expiry.Stop()
	var evs []hub.Event
	for {
		select {
		case <-sub.Ready():
			// Write everything queued, then flush once.
			evs = sub.Take(evs[:0])
			for _, ev := range evs {
				if ev.Seq > cursor {
					sw.event(ev.Seq, ev.Data)
					cursor = ev.Seq
					if len(sw.buf) >= flushAt && !sw.flush() {
						return
					}
				}
			}
			clear(evs) // let the messages go while the stream idles
			if cap(evs) > 8 {
				evs = nil // and the buffer of a burst
			}
			if !sw.flush() {
				return
			}
		case <-sub.Done():
			// Overflow or hub shut down: end the response; the client
			// resumes from its last id and storage fills the gap.
			return
		case <-expiry.C:
			return
		case <-ping.C:
			sw.raw(": ping\n\n")
			if !sw.flush() {
				return
			}
		case <-r.Context().Done():
			return
		case <-shutdown.Done():
			return
		case <-h.stopped.Done():
			return
		}
	}
}

// sseWriter writes Server-Sent Events and remembers the first error.
type sseWriter struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	ended func() bool
	buf   []byte
	err   error
}

func (s *sseWriter) raw(text string) { s.buf = append(s.buf, text...) }

func (s *sseWriter) event(seq uint64, data []byte) {
	s.buf = append(s.buf, "id: "...)
	s.buf = strconv.AppendUint(s.buf, seq, 10)
	s.buf = append(s.buf, "\nevent: message\ndata: "...)
	s.buf = append(s.buf, data...)
	s.buf = append(s.buf, "\n\n"...)
}

// flush writes the buffered events and pushes them to the client.
func (s *sseWriter) flush() bool {
	if s.err != nil || s.ended() {
		return false
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout)) // unsupported writers just have none
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
