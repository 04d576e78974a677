// Package nats is the KEZ chat backend for several servers sharing one NATS
// JetStream cluster (nats-server 2.12 or newer):
//
//   - the registry is a KV bucket, <prefix>_registry, whose keys are
//     h.<handle>, p.<primary with ':' as '.'> and i.<invite, base64url>; a
//     registration writes its two or three keys in one atomic batch where
//     every key must not exist yet (expected last subject sequence 0), or
//     be the delete marker a deletion or rotation left (at its sequence);
//     a deleted handle's delete marker holds the end of its cooldown;
//   - the binding log (SPEC §5) is in the same bucket: leaf.<n> (the leaf
//     data, its tlog stored hashes in a header), log.head (size, subtree
//     hashes), log.key (the note signer key), job.<n>. Every registration,
//     rotation and deletion is one atomic batch of its binding keys, its
//     leaf and log.head at the revision it was read at, which serialises
//     the appends of every server into one sequence (see log.go); what a
//     rotation or deletion changes outside the registry (contact lists,
//     the inbox) follows as a job (jobs.go);
//   - the inboxes are one stream, <prefix>_inbox. A handle's messages from
//     accepted senders are on <prefix>.inbox.<handle>.m, its message
//     requests (SPEC §2.5) on <prefix>.inbox.<handle>.r.<sender>.<epoch>
//     (see contacts.go), so a read is one seek by the filter
//     <prefix>.inbox.<handle>.> and a message's seq is its stream
//     sequence: one increasing sequence per inbox. Retention is the stream's MaxAge, the inbox cap (max_inbox) its
//     per-subject limit with discard-new, which thus counts only messages
//     from accepted senders. v1 messages (on <prefix>.inbox.<handle>, all
//     stored before the stream was moved to these subjects) are read too;
//   - the idempotency records of stored messages, in the same stream under
//     <prefix>.ids.<handle>.<key>.* (key: hash of sender and signature),
//     outlive acknowledgement and go with retention (see Append);
//   - contact lists are a KV bucket, <prefix>_contacts: one key per handle,
//     {"accepted":[…],"blocked":[…]}, changed with optimistic concurrency and
//     cached by every server, kept fresh by a watch on the bucket;
//   - the single-use record of signed requests is a KV bucket, <prefix>_used,
//     one key per signature hash, each with its own TTL (nats-server 2.11+
//     per-message TTL), created only if absent;
//   - live delivery: every server reads the inbox stream with an ordered
//     consumer and calls Notify for each message, whoever stored it; a
//     second one (headers only) on the handles' records and push lists
//     tells it of deletions, rotations and push list changes made through
//     other servers (reccache.go).
//
// Every call is bounded by Options.Timeout, and fails at once while the
// connection is down, so a request never hangs on an unreachable cluster.
package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/storage"
)

// Defaults for Options.
const (
	DefaultPrefix = "kez"
	// DefaultTimeout outlasts a stream leader's election after a crash
	// (4.5–9.7 s in TestLeaderCrashUnderLoad), so sends made meanwhile are
	// stored late instead of refused; with 5 s, 8–16 per crash got 503.
	DefaultTimeout = 10 * time.Second
)

// ErrUnavailable means the NATS cluster cannot be reached right now.
var ErrUnavailable = errors.New("nats: not connected")

// Options configure Open.
type Options struct {
	// URLs of the NATS servers, e.g. nats://a:4222. Required.
	URLs []string
	// CredsFile is a NATS credentials file (JWT and NKey seed).
	CredsFile string
	// TLSCA is a PEM file of the certificate authorities that sign the
	// servers' TLS certificates (tls:// URLs).
	TLSCA string
	// Prefix names the streams, buckets and subjects (<prefix>_inbox,
	// <prefix>.inbox.<handle>…, <prefix>_registry, <prefix>_contacts,
	// <prefix>_used). Default "kez".
	Prefix string
	// Replicas of each stream, 1 to 5 (3 on a 3-node cluster). Default 1.
	Replicas int
	// Retention is the inbox stream's MaxAge. 0: unlimited.
	Retention time.Duration
	// MaxInbox is the inbox stream's per-subject limit, enforced by the
	// server with discard-new-per-subject. 0: unlimited. See Append for how
	// it relates to Limits.MaxInbox.
	MaxInbox int
	// Timeout bounds every call to the cluster. Default DefaultTimeout (10s).
	Timeout time.Duration
	// MaxEnvelope is the largest envelope the server accepts; a warning
	// is logged when the NATS servers' max_payload is too small for it.
	MaxEnvelope int64
	// Name is the client connection name shown by the servers.
	Name string
	// Notify is called for every message stored in any inbox by any server
	// sharing the cluster, in stream order (so seqs ascend per inbox).
	Notify storage.Notify
	// Disconnected is called when the connection to the cluster is lost.
	// Notify stays silent until it is back; live streams should end so
	// their clients resume from storage (through this or another server).
	Disconnected func(error)
	// Logger receives connection and setup events. Default: discard.
	Logger *slog.Logger
}

// Store is a NATS JetStream storage.Store.
type Store struct {
	opts       Options
	log        *slog.Logger
	nc         *natsio.Conn
	js         jetstream.JetStream
	timeout    time.Duration
	inboxName  string // stream
	inboxSubj  string // <prefix>.inbox.
	idsSubj    string // <prefix>.ids.
	bucket     string // KV bucket
	regName    string // KV_<bucket>
	regSubj    string // $KV.<bucket>.
	apiPrefix  string // $JS.API.
	maxPayload int

	contactsBucket string // <prefix>_contacts
	contactsName   string // KV_<prefix>_contacts
	contactsSubj   string // $KV.<prefix>_contacts.
	usedBucket     string // <prefix>_used
	usedName       string // KV_<prefix>_used
	usedSubj       string // $KV.<prefix>_used.

	setupMu   sync.Mutex
	ready     bool
	lastSetup time.Time
	setupErr  error
	feed      jetstream.ConsumeContext
	watch     jetstream.ConsumeContext // contact list changes
	bindings  jetstream.ConsumeContext // rotations and deletions (registry.go)

	mu      sync.Mutex
	closed  bool
	handles map[string]bool   // handles known to be registered (until deleted)
	changed map[string]uint64 // per handle, the seq of its last write but a registration seen here
	// recCache and primCache: records read here (reccache.go).
	recCache  map[string]cachedRecord
	primCache map[string]cachedHandle
	// pushCache: push lists read here; pushChanged: per handle, the seq
	// of the last write of its list seen here (reccache.go).
	pushCache   map[string]cachedPush
	pushChanged map[string]uint64
	seen        map[string]uint64 // per inbox, the last seq the feed delivered
	verified    map[string]uint64 // per inbox, seqs up to which a leader read confirmed what is stored
	streamMI    int64             // the inbox stream's per-subject limit as last seen (-1: none)
	v1Last      uint64            // no v1 message has a higher seq (0: none ever stored)
	v1          map[string]uint64 // per inbox, the seq of its last v1 message (0: none)

	cmu      sync.Mutex
	contacts map[string]*cachedContacts // contact lists in use here, by handle

	recMu     sync.Mutex
	records   map[string]chan struct{} // idempotency records being written, by subject
	expiredTo atomic.Int64             // the latest cutoff Expire applied here (unix ms)

	// The binding log (log.go, jobs.go).
	lmu        sync.Mutex
	head       *logHead            // the newest head seen here
	hashes     map[int64]tlog.Hash // stored hashes, by index (bounded)
	entries    map[int64][]byte    // leaf data, by index (bounded)
	entryBytes int
	logKey     string        // the signer key, once read
	logSem     chan struct{} // one append at a time from this server
	logOnce    sync.Once
	logReady   chan struct{} // closed once every binding has its leaf
	jobMu      sync.Mutex
	stopCtx    context.Context // ends with Close
	stop       context.CancelFunc

	// recordCacheOff, in benchmarks, makes every lookup read the registry.
	recordCacheOff bool
	// batchFault, in tests, changes what a batch commit answered.
	batchFault func(*pubAck, error) (*pubAck, error)
}

// ValidPrefix reports whether p can name the streams and subjects.
func ValidPrefix(p string) bool {
	if p == "" || len(p) > 32 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Open connects to the cluster and sets up the streams. An unreachable
// cluster is not an error: the connection is retried in the background and
// the streams are set up on first use, meanwhile calls fail with
// ErrUnavailable. Errors are for unusable options only.
func Open(opts Options) (*Store, error) {
	if len(opts.URLs) == 0 {
		return nil, errors.New("nats: at least one server URL is required")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !ValidPrefix(opts.Prefix) {
		return nil, fmt.Errorf("nats: stream prefix %q must be 1-32 letters, digits, '_' or '-'", opts.Prefix)
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.Replicas > 5 {
		return nil, fmt.Errorf("nats: replicas %d: at most 5", opts.Replicas)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		opts:        opts,
		log:         opts.Logger,
		timeout:     opts.Timeout,
		inboxName:   opts.Prefix + "_inbox",
		inboxSubj:   opts.Prefix + ".inbox.",
		idsSubj:     opts.Prefix + ".ids.",
		bucket:      opts.Prefix + "_registry",
		apiPrefix:   "$JS.API.",
		handles:     map[string]bool{},
		changed:     map[string]uint64{},
		recCache:    map[string]cachedRecord{},
		primCache:   map[string]cachedHandle{},
		pushCache:   map[string]cachedPush{},
		pushChanged: map[string]uint64{},
		hashes:      map[int64]tlog.Hash{},
		entries:     map[int64][]byte{},
		logSem:      make(chan struct{}, 1),
		logReady:    make(chan struct{}),
		seen:        map[string]uint64{},
		verified:    map[string]uint64{},
		v1:          map[string]uint64{},
		streamMI:    -1,
		contacts:    map[string]*cachedContacts{},
		records:     map[string]chan struct{}{},
	}
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	s.regName = "KV_" + s.bucket
	s.regSubj = "$KV." + s.bucket + "."
	s.contactsBucket = opts.Prefix + "_contacts"
	s.contactsName = "KV_" + s.contactsBucket
	s.contactsSubj = "$KV." + s.contactsBucket + "."
	s.usedBucket = opts.Prefix + "_used"
	s.usedName = "KV_" + s.usedBucket
	s.usedSubj = "$KV." + s.usedBucket + "."

	name := opts.Name
	if name == "" {
		name = "kez_chat"
	}
	copts := []natsio.Option{
		natsio.Name(name),
		natsio.Timeout(opts.Timeout),
		// Connect in the background when the cluster is down at start:
		// Caddy's Provision (and `caddy validate`) must stay quick.
		natsio.RetryOnFailedConnect(true),
		natsio.MaxReconnects(-1),
		natsio.ReconnectWait(500 * time.Millisecond),
		// No buffering while disconnected: a publish fails at once
		// instead of being sent, maybe, long after its request gave up.
		natsio.ReconnectBufSize(-1),
		natsio.PingInterval(5 * time.Second),
		natsio.MaxPingsOutstanding(2),
		natsio.DisconnectErrHandler(func(_ *natsio.Conn, err error) {
			s.log.Warn("lost the connection to NATS", "error", err)
			// Changes made meanwhile may reach the watch late: look
			// contact lists up again once back.
			s.forgetContacts()
			s.forgetRecords()
			if opts.Disconnected != nil {
				opts.Disconnected(err)
			}
		}),
		natsio.ReconnectHandler(func(nc *natsio.Conn) {
			s.log.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted())
		}),
		natsio.ConnectHandler(func(nc *natsio.Conn) {
			s.log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted())
		}),
	}
	if opts.CredsFile != "" {
		copts = append(copts, natsio.UserCredentials(opts.CredsFile))
	}
	if opts.TLSCA != "" {
		copts = append(copts, natsio.RootCAs(opts.TLSCA))
	}
	nc, err := natsio.Connect(strings.Join(opts.URLs, ","), copts...)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats: %w", err)
	}
	s.nc, s.js = nc, js
	if nc.IsConnected() {
		// Bounded tighter than a request: Caddy waits for Provision (and
		// `caddy validate` too). A cluster still electing its leaders is
		// set up on first use instead.
		ctx, cancel := context.WithTimeout(context.Background(), min(opts.Timeout, openSetupTimeout))
		defer cancel()
		if err := s.setup(ctx); err != nil {
			s.log.Warn("NATS stream setup failed; retrying on use", "error", err)
		}
	} else {
		s.log.Warn("NATS is not reachable yet; connecting in the background", "urls", strings.Join(opts.URLs, " "))
	}
	return s, nil
}

// openSetupTimeout bounds the stream setup Open attempts.
const openSetupTimeout = 2 * time.Second

// setupRetryEvery spaces out setup attempts made by requests.
const setupRetryEvery = time.Second

// check returns ErrClosed, ErrUnavailable, or nil once the streams are set up.
func (s *Store) check(ctx context.Context) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return storage.ErrClosed
	}
	if !s.nc.IsConnected() {
		return ErrUnavailable
	}
	s.setupMu.Lock()
	ready := s.ready
	s.setupMu.Unlock()
	if ready {
		return nil
	}
	return s.setup(ctx)
}

// setup creates or updates the streams and starts the feed, once.
func (s *Store) setup(ctx context.Context) error {
	s.setupMu.Lock()
	defer s.setupMu.Unlock()
	if s.ready {
		return nil
	}
	if !s.lastSetup.IsZero() && time.Since(s.lastSetup) < setupRetryEvery {
		return fmt.Errorf("nats: streams are not set up: %w", s.setupErr)
	}
	s.lastSetup = time.Now()
	err := s.ensureStreams(ctx)
	if err == nil && s.watch == nil {
		err = s.startWatch(ctx)
	}
	if err == nil && s.bindings == nil {
		err = s.startBindingWatch(ctx)
	}
	if err == nil {
		err = s.startFeed(ctx)
	}
	s.setupErr = err
	if err != nil {
		return err
	}
	s.maxPayload = int(s.nc.MaxPayload())
	if s.opts.MaxEnvelope > 0 && int(s.opts.MaxEnvelope)+payloadOverhead > s.maxPayload {
		s.log.Warn("the NATS servers' max_payload is smaller than max_envelope: larger envelopes will be refused with 503; raise max_payload in every nats-server's configuration",
			"max_payload", s.maxPayload, "max_envelope", s.opts.MaxEnvelope)
	}
	s.ready = true
	s.startLogWork()
	return nil
}

// Reconfigure applies new stream limits (replicas, retention, cap) to an
// open store, under the same rules as Open: limits only ever grow.
func (s *Store) Reconfigure(ctx context.Context, replicas int, retention time.Duration, maxInbox int) error {
	s.setupMu.Lock()
	if replicas > 0 {
		s.opts.Replicas = replicas
	}
	s.opts.Retention, s.opts.MaxInbox = retention, maxInbox
	ready := s.ready
	s.setupMu.Unlock()
	if !ready || !s.nc.IsConnected() {
		return nil // applied by the setup to come
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	s.setupMu.Lock()
	defer s.setupMu.Unlock()
	return s.ensureStreams(ctx)
}

// Close stops the feed and closes the connection; later calls return
// storage.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stop()
	wctx, wcancel := context.WithTimeout(context.Background(), s.timeout)
	s.waitRecords(wctx, "")
	wcancel()
	s.setupMu.Lock()
	if s.feed != nil {
		s.feed.Stop()
	}
	if s.watch != nil {
		s.watch.Stop()
	}
	if s.bindings != nil {
		s.bindings.Stop()
	}
	s.setupMu.Unlock()
	s.nc.Close()
	return nil
}

// Conn is the underlying connection (tests, diagnostics).
func (s *Store) Conn() *natsio.Conn { return s.nc }

// InboxStream is the name of the inbox stream.
func (s *Store) InboxStream() string { return s.inboxName }

// RegistryStream is the name of the registry's KV stream.
func (s *Store) RegistryStream() string { return s.regName }

// ContactsStream is the name of the contact lists' KV stream.
func (s *Store) ContactsStream() string { return s.contactsName }

// UsedStream is the name of the single-use record's KV stream.
func (s *Store) UsedStream() string { return s.usedName }

// Ping reads the registry stream's state from its leader.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return err
	}
	var resp struct {
		apiResponse
		State *jetstream.StreamState `json:"state"`
	}
	if err := s.api(ctx, "STREAM.INFO."+s.regName, nil, &resp); err != nil {
		return err
	}
	return nil
}

var _ storage.Store = (*Store)(nil)
