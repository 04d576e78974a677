package client

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"time"
)

// StreamOptions tunes Stream. The zero value is ready to use.
type StreamOptions struct {
	// Since: deliver only messages with seq > Since (0: everything stored).
	Since uint64
	// OnConnect is called each time a stream is open and authorized.
	OnConnect func()
	// OnDisconnect is called when a connection ends or fails and Stream
	// will try again after wait.
	OnDisconnect func(err error, wait time.Duration)
	// IdleTimeout drops a connection on which nothing, not even a ping, has
	// arrived for this long. Default 45 s: three of the server's 15 s pings.
	IdleTimeout time.Duration
	// MaxBackoff caps the wait between failed attempts. Default 30 s.
	MaxBackoff time.Duration
	// OnReplay is called, instead of onMessage, for a message at or below
	// the seq already delivered, which Stream drops. A correct server never
	// sends one (SPEC §2.7: no duplicate across stored, live and resumed);
	// checkers such as kezbench count them.
	OnReplay func(Message)
}

// ErrStreamEnded is the reason given to OnDisconnect when the server closed
// the stream, as it does on reload, shutdown, a full subscriber buffer, a
// change of the binding, and once the stream is stream_max_age old (about an
// hour, SPEC §2.7). Stream reconnects at once, with a new signature.
var ErrStreamEnded = errors.New("server ended the stream")

// Stream delivers the inbox live (SPEC §2.7): first the stored messages
// after opts.Since, then new ones as they arrive, each exactly once and in
// seq order, to onMessage. It reconnects on its own, with a fresh signature
// each time (in the X-KEZ-Auth header, never in the URL) and since = the
// last seq delivered in the signed query, so nothing is skipped. Message
// requests (SPEC §2.9) come too, marked Message.Request.
//
// Stream returns ctx.Err() when ctx ends, onMessage's error if it returns
// one, or an error the server will keep giving (unauthorized, not found).
func (c *Client) Stream(ctx context.Context, opts StreamOptions, onMessage func(Message) error) error {
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 45 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	s := &streamState{since: opts.Since, retry: 3 * time.Second}
	failures := 0
	for {
		healthy, err := c.streamOnce(ctx, s, opts, onMessage)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var cb callbackError
		if errors.As(err, &cb) {
			return cb.err
		}
		if permanent(err) {
			return err
		}
		if healthy {
			failures = 0
		} else {
			failures++
		}
		wait := s.backoff(failures, opts.MaxBackoff)
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.RetryAfter > wait {
			wait = apiErr.RetryAfter
		}
		if opts.OnDisconnect != nil {
			opts.OnDisconnect(err, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// streamState is what survives from one connection to the next.
type streamState struct {
	since uint64        // the last seq delivered
	retry time.Duration // the server's "retry:" advice
}

// backoff is how long to wait before the next attempt, after failures
// attempts in a row that were not healthy. The reconnect after a healthy
// stream (failures = 0) waits only a jittered moment, so a server reload
// costs little; failed attempts back off from the server's retry advice.
func (s *streamState) backoff(failures int, max time.Duration) time.Duration {
	if failures == 0 {
		return rand.N(min(s.retry, time.Second, max)) + time.Millisecond
	}
	d := s.retry << min(failures-1, 10)
	d = min(d, max)
	return d/2 + rand.N(d/2+1)
}

// callbackError carries an error from onMessage, which ends Stream.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

// permanent reports errors that another attempt would only repeat.
func permanent(err error) bool {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		switch apiErr.Status {
		case http.StatusRequestTimeout, http.StatusTooManyRequests:
			return false
		}
		return apiErr.Status >= 400 && apiErr.Status < 500
	}
	var protoErr *ProtocolError
	return errors.As(err, &protoErr) || errors.Is(err, ErrNoIdentity)
}

// healthyAfter is how long a stream must stay open, if it delivers nothing,
// to count as working: a server that accepts and at once closes streams
// gets the backoff, not a reconnect loop.
const healthyAfter = 5 * time.Second

// streamOnce runs one connection until it ends. healthy reports whether it
// worked (delivered a message or stayed open), which resets the backoff.
func (c *Client) streamOnce(ctx context.Context, s *streamState, opts StreamOptions, onMessage func(Message) error) (healthy bool, err error) {
	if c.Keys() == nil || c.handle == "" {
		return false, ErrNoIdentity
	}
	connCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The watchdog cancels a connection that has gone quiet; every line,
	// pings included, pushes it back.
	idle := time.AfterFunc(opts.IdleTimeout, cancel)
	defer idle.Stop()

	// The signature is in the header, never in the URL (URLs end up in
	// logs), and covers since: the server honours no unsigned cursor.
	cl := &call{method: http.MethodGet, path: c.inboxPath() + "/stream", query: map[string]uint64{"since": s.since},
		signed: true, accept: "text/event-stream"}
	path := cl.urlPath()
	resp, err := c.roundTrip(connCtx, cl)
	if err != nil {
		return false, c.idleOr(ctx, connCtx, err)
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return false, &ProtocolError{URL: c.base + path, Reason: "Content-Type is " + strconv.Quote(mt) + ", not text/event-stream"}
	}
	if opts.OnConnect != nil {
		opts.OnConnect()
	}
	opened, delivered := time.Now(), false
	ended := func(err error) (bool, error) { return delivered || time.Since(opened) >= healthyAfter, err }
	events := newSSEReader(resp.Body)
	events.onLine = func() { idle.Reset(opts.IdleTimeout) }
	events.onRetry = func(d time.Duration) { s.retry = max(d, 100*time.Millisecond) }
	for {
		ev, err := events.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return ended(ErrStreamEnded)
			}
			if errors.Is(err, errSSELineTooLong) {
				return ended(&ProtocolError{URL: c.base + path, Reason: err.Error()})
			}
			return ended(c.idleOr(ctx, connCtx, &NetworkError{URL: c.base, Err: unwrapURLError(err)}))
		}
		if ev.Type != "message" {
			continue
		}
		m, err := parseMessage(ev.Data)
		if err != nil {
			return ended(&ProtocolError{URL: c.base + path, Reason: "event data is not a message: " + err.Error()})
		}
		if m.Seq <= s.since {
			if opts.OnReplay != nil {
				opts.OnReplay(m)
			}
			continue // a replayed message we already delivered
		}
		if err := onMessage(m); err != nil {
			return ended(callbackError{err})
		}
		s.since, delivered = m.Seq, true
	}
}

// errIdle is the reason for a connection the watchdog closed.
var errIdle = errors.New("no data or ping from the server for too long")

// idleOr names the watchdog as the cause when it, not the caller's
// context, cancelled the connection.
func (c *Client) idleOr(ctx, connCtx context.Context, err error) error {
	if ctx.Err() == nil && connCtx.Err() != nil {
		return &NetworkError{URL: c.base, Err: errIdle}
	}
	return err
}
