package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/kez"
)

// user is one registered benchmark identity.
type user struct {
	idx    int
	handle string
	keys   *kez.Keys
	c      *client.Client // streams, acks, contacts
	// send posts this user's messages, signed by its key (SPEC §2.5), over
	// the fleet's send connections.
	send *client.Client
	// lastSeq is the highest seq this user has received in any scenario:
	// the next scenario's stream starts after it.
	lastSeq atomic.Uint64

	mu       sync.Mutex
	accepted map[int]bool // the users (by idx) this one has accepted as contacts
}

// fleet is the set of users on one server. Users are registered once and
// reused by every scenario (scenario n uses users[0:k]).
type fleet struct {
	url    string
	server string // the server name in addresses
	prefix string // handles are <prefix><index>
	// sendHTTP carries sends (keep-alive pool sized for the senders);
	// streamHTTP carries streams (one connection each).
	sendHTTP, streamHTTP *http.Client
	users                []*user
}

func newTransport(idle int) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}).DialContext,
		MaxIdleConns:        idle,
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // measure the relay, not gzip
		ForceAttemptHTTP2:   false,
	}
}

// newH2CTransport speaks HTTP/2 without TLS (prior knowledge, h2c) only:
// many streams share a connection, as browsers' do over TLS.
func newH2CTransport() *http.Transport {
	t := newTransport(16)
	t.Protocols = new(http.Protocols)
	t.Protocols.SetUnencryptedHTTP2(true)
	return t
}

// streamProtocol asks the server once over the stream client and returns
// the protocol it answered in ("HTTP/1.1", "HTTP/2.0").
func (f *fleet) streamProtocol(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url+"/v1/healthz", nil)
	if err != nil {
		return "", err
	}
	resp, err := f.streamHTTP.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	return resp.Proto, nil
}

// newFleet connects to url and checks it is a KEZ chat server. Handles get
// a random run prefix, so runs against the same database never collide.
func newFleet(ctx context.Context, url string, senders int) (*fleet, error) {
	var runID [3]byte
	if _, err := rand.Read(runID[:]); err != nil {
		return nil, err
	}
	f := &fleet{
		url:        strings.TrimRight(url, "/"),
		prefix:     "kb" + hex.EncodeToString(runID[:]) + "-",
		sendHTTP:   &http.Client{Transport: newTransport(2 * senders)},
		streamHTTP: &http.Client{Transport: newTransport(16)},
	}
	probe, err := client.New(f.url, client.Options{HTTPClient: f.sendHTTP})
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := probe.Health(hctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.url, err)
	}
	if h.Protocol < 2 {
		return nil, fmt.Errorf("%s speaks KEZ protocol %d; kezbench needs 2", f.url, h.Protocol)
	}
	f.server = h.Server
	return f, nil
}

// ensure registers users until the fleet has n, with a few registrations in
// flight at once. Each registration is one signed request and, on the
// server, one storage transaction.
func (f *fleet) ensure(ctx context.Context, n int, progress func(done, total int)) error {
	start := len(f.users)
	if n <= start {
		return nil
	}
	added := make([]*user, n-start)
	var next, done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	const workers = 8
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(added) || ctx.Err() != nil {
					return
				}
				u, err := f.register(ctx, start+i)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				added[i] = u
				if d := int(done.Add(1)); progress != nil && d%1000 == 0 {
					progress(d, len(added))
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.users = append(f.users, added...)
	return nil
}

func (f *fleet) register(ctx context.Context, idx int) (*user, error) {
	keys := kez.GenerateKeys()
	handle := f.prefix + strconv.Itoa(idx)
	c, err := client.New(f.url, client.Options{HTTPClient: f.streamHTTP, Keys: keys, Handle: handle, ServerName: f.server})
	if err != nil {
		return nil, err
	}
	// A lost answer is retried: registration is idempotent.
	for attempt := 0; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = c.Register(rctx, handle)
		cancel()
		if err == nil {
			break
		}
		var netErr *client.NetworkError
		if attempt >= 2 || !errors.As(err, &netErr) || ctx.Err() != nil {
			return nil, fmt.Errorf("register %s: %w", handle, err)
		}
	}
	send, err := client.New(f.url, client.Options{HTTPClient: f.sendHTTP, Keys: keys, Handle: handle, ServerName: f.server})
	if err != nil {
		return nil, err
	}
	return &user{idx: idx, handle: handle, keys: keys, c: c, send: send, accepted: map[int]bool{}}, nil
}

// acceptSenders makes every recipient users[i] accept its sender
// (sender(users, i)) as a contact, unless it already did: a stranger's
// messages are requests, of which the server keeps only request_limit
// (default 3) per sender (SPEC §2.9). Each acceptance is one signed PUT.
func acceptSenders(ctx context.Context, users []*user, workers int) error {
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(users) || ctx.Err() != nil {
					return
				}
				to, from := users[i], sender(users, i)
				to.mu.Lock()
				done := to.accepted[from.idx]
				to.mu.Unlock()
				if done {
					continue
				}
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := to.c.Accept(actx, from.keys.Primary())
				cancel()
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("%s accepts %s: %w", to.handle, from.handle, err) })
					return
				}
				to.mu.Lock()
				to.accepted[from.idx] = true
				to.mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// streams is a set of open client.Stream connections feeding a tracker.
type streams struct {
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	connected atomic.Int64 // connections opened (reconnects count again)
	drops     atomic.Int64 // connections that ended and were retried
	mu        sync.Mutex
	errs      []error // streams that gave up
}

// openStreams runs client.Stream for every user, feeding deliveries to t,
// and waits (up to within) until every stream is open. At most inFlight
// streams are being opened at once.
func openStreams(ctx context.Context, users []*user, t *tracker, inFlight int, within time.Duration) (*streams, error) {
	sctx, cancel := context.WithCancel(ctx)
	s := &streams{cancel: cancel}
	sem := make(chan struct{}, inFlight)
	for _, u := range users {
		opened := make(chan struct{})
		var once sync.Once
		select {
		case sem <- struct{}{}:
		case <-sctx.Done():
			s.close()
			return nil, ctx.Err()
		}
		s.wg.Go(func() {
			release := sync.OnceFunc(func() { <-sem })
			defer release()
			err := u.c.Stream(sctx, client.StreamOptions{
				Since: u.lastSeq.Load(),
				OnConnect: func() {
					s.connected.Add(1)
					once.Do(func() { close(opened); release() })
				},
				OnDisconnect: func(error, time.Duration) { s.drops.Add(1) },
				MaxBackoff:   2 * time.Second,
				// The client drops a message the server sends twice; count
				// it here so the exactly-once check sees it.
				OnReplay: func(m client.Message) { t.delivered(u, m, time.Now()) },
			}, func(m client.Message) error {
				t.delivered(u, m, time.Now())
				return nil
			})
			if err != nil && sctx.Err() == nil {
				s.mu.Lock()
				s.errs = append(s.errs, fmt.Errorf("stream %s: %w", u.handle, err))
				s.mu.Unlock()
				once.Do(func() { close(opened) })
			}
		})
	}
	deadline := time.Now().Add(within)
	for int(s.connected.Load()) < len(users) {
		if err := s.err(); err != nil {
			s.close()
			return nil, err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			n := s.connected.Load()
			s.close()
			return nil, fmt.Errorf("only %d of %d streams open after %s", n, len(users), within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s, nil
}

func (s *streams) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) > 0 {
		return s.errs[0]
	}
	return nil
}

// close ends every stream and waits for them.
func (s *streams) close() {
	s.cancel()
	s.wg.Wait()
}

// ackAll acknowledges what each user received, so the database does not grow
// from run to run. Failures are counted, not fatal.
func ackAll(ctx context.Context, users []*user, workers int) (failed int) {
	var next atomic.Int64
	var bad atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(users) {
					return
				}
				u := users[i]
				upto := u.lastSeq.Load()
				if upto == 0 {
					continue
				}
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				if _, err := u.c.Ack(actx, upto); err != nil {
					bad.Add(1)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	return int(bad.Load())
}
