package push

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	webpush "github.com/SherClockHolmes/webpush-go"

	"github.com/kezchat/kez/storage"
)

// Limits of outbound pushes (SPEC §7).
const (
	// PushTimeout bounds one push, from connecting to reading the answer.
	PushTimeout = 10 * time.Second
	// MaxAnswer is how much of a push service's answer is read.
	MaxAnswer = 4 << 10
	// Concurrency bounds the pushes in flight.
	Concurrency = 16
	// QueueSize bounds the notifications and pushes waiting for a worker;
	// beyond it they are dropped (and counted), never waited for.
	QueueSize = 4096
	// MaxSubscriptions per handle; the oldest goes beyond it.
	MaxSubscriptions = 10
	// DefaultInterval is push_interval's default.
	DefaultInterval = 5 * time.Second
	// TTL is how long a push service keeps an undelivered push (RFC 8030
	// §5.2): a device offline for longer finds its messages on next start.
	TTL = 24 * time.Hour
	// recordSize is the RFC 8188 record size: the whole push body, padded
	// to it, so every push is the same size whatever the handle and seq.
	recordSize = 256
)

// Options configure a Sender.
type Options struct {
	// Contact is the VAPID "sub" claim: a mailto: or https: URI where the
	// push service can reach the operator.
	Contact string
	// Interval is the least time between two pushes to one device (while
	// messages keep coming, a push carries the latest seq). Default
	// DefaultInterval.
	Interval time.Duration
	// AllowPrivate admits http and private, loopback and link-local
	// endpoints: for tests only.
	AllowPrivate bool
	// Log receives failures (at debug level for the push service's
	// refusals, which hostile subscriptions cause at will). Default: discard.
	Log *slog.Logger
	// Timeout bounds one push. Default PushTimeout; tests shorten it.
	Timeout time.Duration
	// Queue bounds the jobs waiting for a worker. Default QueueSize.
	Queue int
	// Counted is told of every outcome: "sent", "failed", "removed" (the
	// push service answered 404 or 410), "dropped" (the queue was full).
	// May be nil.
	Counted func(outcome string)
}

// Sender sends pushes in the background. Notify never blocks.
type Sender struct {
	store storage.Store
	cfg   atomic.Pointer[config] // Configure swaps it

	ctx     context.Context // ends with Close
	stop    context.CancelFunc
	work    chan func(context.Context)
	wg      sync.WaitGroup
	pending atomic.Int64 // jobs queued or running

	keyMu sync.Mutex
	key   *vapidKey

	mu      sync.Mutex
	devices map[deviceID]*device
}

type deviceID struct{ handle, endpoint string }

// device is what the sender remembers of one subscription while it is
// being pushed to: the latest seq to announce, and when the last push
// went out. queued is set from the moment a push is planned until it is
// done, so at most one is planned or in flight per device.
type device struct {
	sub    storage.PushSubscription
	seq    uint64 // the latest seq notified
	last   time.Time
	queued bool
	idle   *time.Timer // forgets the device once an interval has passed quietly
}

// config is a Sender's options in force, with the HTTP client they call for.
type config struct {
	Options
	http *http.Client
}

// New starts a Sender for store's subscriptions. Close stops it.
func New(store storage.Store, opts Options) *Sender {
	ctx, stop := context.WithCancel(context.Background())
	s := &Sender{store: store, ctx: ctx, stop: stop,
		work: make(chan func(context.Context), cmp.Or(opts.Queue, QueueSize)), devices: map[deviceID]*device{}}
	s.Configure(opts)
	for range Concurrency {
		s.wg.Go(s.worker)
	}
	return s
}

// Configure applies new options (a Caddy reload) to the sender, keeping
// what it is doing: queued and planned pushes, and each device's interval.
// Queue keeps the size New gave it.
func (s *Sender) Configure(opts Options) {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	opts.Timeout = cmp.Or(opts.Timeout, PushTimeout)
	next := &config{Options: opts}
	if old := s.cfg.Load(); old != nil && old.AllowPrivate == opts.AllowPrivate {
		next.http = old.http
	} else {
		next.http = newClient(opts.AllowPrivate)
	}
	if old := s.cfg.Swap(next); old != nil && old.http != next.http {
		old.http.CloseIdleConnections()
	}
}

func (s *Sender) opts() *config { return s.cfg.Load() }

// Close stops the workers; planned pushes are dropped.
func (s *Sender) Close() {
	s.stop()
	s.wg.Wait()
	s.mu.Lock()
	for _, d := range s.devices {
		if d.idle != nil {
			d.idle.Stop()
		}
	}
	s.mu.Unlock()
	s.opts().http.CloseIdleConnections()
}

// AllowPrivate reports whether private endpoints are admitted (tests).
func (s *Sender) AllowPrivate() bool { return s.opts().AllowPrivate }

// PublicKey is the VAPID public key, base64url (GET /v1/push/key), made
// and stored on first use.
func (s *Sender) PublicKey(ctx context.Context) (string, error) {
	k, err := s.vapid(ctx)
	if err != nil {
		return "", err
	}
	return k.public, nil
}

func (s *Sender) vapid(ctx context.Context) (*vapidKey, error) {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	if s.key != nil {
		return s.key, nil
	}
	fresh, err := NewVAPIDKey()
	if err != nil {
		return nil, err
	}
	scalar, err := s.store.PushKey(ctx, fresh)
	if err != nil {
		return nil, err
	}
	if s.key, err = parseVAPIDKey(scalar); err != nil {
		return nil, err
	}
	return s.key, nil
}

// Notify plans a push of seq to each of handle's devices, after a message
// for handle was stored durably. It returns at once; the subscriptions are
// read by a worker.
func (s *Sender) Notify(handle string, seq uint64) {
	s.enqueue(func(ctx context.Context) {
		subs, err := s.store.PushSubscriptions(ctx, handle)
		if err != nil {
			s.opts().Log.Warn("push: reading subscriptions failed", "handle", handle, "error", err)
			return
		}
		for _, sub := range subs {
			s.plan(deviceID{handle, sub.Endpoint}, sub, seq)
		}
	})
}

func (s *Sender) enqueue(job func(context.Context)) bool {
	s.pending.Add(1)
	select {
	case s.work <- job:
		return true
	default:
		s.pending.Add(-1)
		s.count("dropped")
		return false
	}
}

// Quiet reports whether nothing is queued, in flight or planned: every
// push due so far has been made (tests wait for it before counting).
func (s *Sender) Quiet() bool {
	if s.pending.Load() > 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.devices {
		if d.queued {
			return false
		}
	}
	return s.pending.Load() == 0
}

func (s *Sender) count(outcome string) {
	if counted := s.opts().Counted; counted != nil {
		counted(outcome)
	}
}

func (s *Sender) worker() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case job := <-s.work:
			job(s.ctx)
			s.pending.Add(-1)
		}
	}
}

// plan records seq for the device and, unless a push is already planned
// or in flight (which will carry it), plans one: now, or once an interval
// has passed since the last.
func (s *Sender) plan(id deviceID, sub storage.PushSubscription, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[id]
	if d == nil {
		d = &device{}
		s.devices[id] = d
	}
	d.sub, d.seq = sub, max(d.seq, seq)
	if d.queued {
		return
	}
	if d.idle != nil {
		d.idle.Stop()
		d.idle = nil
	}
	d.queued = true
	s.scheduleLocked(id, d)
}

// scheduleLocked queues the device's push, after the rest of its interval.
func (s *Sender) scheduleLocked(id deviceID, d *device) {
	job := func(ctx context.Context) { s.send(ctx, id) }
	if wait := time.Until(d.last.Add(s.opts().Interval)); wait > 0 {
		time.AfterFunc(wait, func() {
			if !s.enqueue(job) {
				s.mu.Lock()
				d.queued = false
				s.mu.Unlock()
			}
		})
		return
	}
	if !s.enqueue(job) {
		d.queued = false
	}
}

// send pushes the device's latest seq, then plans the next push if more
// came meanwhile, or forgets the device after a quiet interval.
func (s *Sender) send(ctx context.Context, id deviceID) {
	s.mu.Lock()
	d := s.devices[id]
	sub, seq := d.sub, d.seq
	s.mu.Unlock()

	gone := s.push(ctx, id.handle, sub, seq)

	s.mu.Lock()
	defer s.mu.Unlock()
	// The interval runs from the end of this push, so the push service
	// sees two pushes at least an interval apart.
	d.last = time.Now()
	if !gone && d.seq > seq {
		s.scheduleLocked(id, d)
		return
	}
	d.queued = false
	d.idle = time.AfterFunc(s.opts().Interval, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.devices[id] == d && !d.queued {
			delete(s.devices, id)
		}
	})
}

// push sends one push and reports whether the subscription is gone (the
// push service answered 404 or 410, and it was deleted).
func (s *Sender) push(ctx context.Context, handle string, sub storage.PushSubscription, seq uint64) (gone bool) {
	cfg := s.opts()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := checkEndpoint(sub.Endpoint, cfg.AllowPrivate); err != nil {
		// Stored under another configuration, or by hand: never contacted.
		s.count("failed")
		cfg.Log.Debug("push: endpoint refused", "handle", handle, "error", err)
		return false
	}
	key, err := s.vapid(ctx)
	if err != nil {
		s.count("failed")
		cfg.Log.Warn("push: no VAPID key", "error", err)
		return false
	}
	payload := `{"handle":"` + handle + `","seq":` + strconv.FormatUint(seq, 10) + `}` // a handle needs no escaping
	resp, err := webpush.SendNotificationWithContext(ctx, []byte(payload),
		&webpush.Subscription{Endpoint: sub.Endpoint, Keys: webpush.Keys{P256dh: sub.P256dh, Auth: sub.Auth}},
		&webpush.Options{
			HTTPClient: cfg.http,
			RecordSize: recordSize,
			// webpush-go adds "mailto:" to anything not https:.
			Subscriber:      strings.TrimPrefix(cfg.Contact, "mailto:"),
			Topic:           key.topic(handle),
			TTL:             int(TTL / time.Second),
			Urgency:         webpush.UrgencyHigh,
			VAPIDPublicKey:  key.public,
			VAPIDPrivateKey: key.private,
		})
	if err != nil {
		s.count("failed")
		cfg.Log.Debug("push failed", "handle", handle, "error", err)
		return false
	}
	// Read a little of the answer (a connection may then be reused), never more.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxAnswer))
	_ = resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		// The browser unsubscribed, or the push service forgot it.
		if _, err := s.store.DeletePush(ctx, handle, sub.Endpoint); err != nil && !errors.Is(err, storage.ErrNotFound) {
			cfg.Log.Warn("push: removing a gone subscription failed", "handle", handle, "error", err)
		}
		s.count("removed")
		return true
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		s.count("sent")
	default:
		s.count("failed")
		cfg.Log.Debug("push refused", "handle", handle, "status", fmt.Sprint(resp.StatusCode))
	}
	return false
}
