package nats

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	natsio "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/storage"
)

// The binding log (SPEC §5) lives in the registry bucket, beside the
// bindings it records, so that a leaf and the binding change it records
// are one atomic batch on one stream:
//
//	leaf.<n>          leaf n's data (the JCS of the signed object); header
//	                  Kez-Log-Hashes: the tlog stored hashes leaf n adds
//	                  (tlog.StoredHashes: positions StoredHashIndex(0, n)
//	                  onwards), base64, space-separated
//	log.head          {"size":n,"frontier":[…]}: the log's size and the
//	                  hashes of its maximal complete subtrees (what the
//	                  next append and the tree hash need)
//	log.key           the log's note signer key (note.GenerateKey form)
//	log.legacy        set once the registrations stored before the log
//	                  have their leaves (see migrateLegacy)
//	job.<n>           work that follows the change of leaf n (see jobs.go)
//
// Every append is one atomic batch: the binding's keys (each with the
// revision it was read at, or "must not exist"), leaf.<n> (must not exist)
// and log.head last, with the head's revision as read. The head's
// revision check serialises every append of every server: of two batches
// built on the same head, exactly one is stored, all of it; the other
// stores nothing, re-reads the head and tries again at the next index. A
// retried batch whose first copy was stored fails its binding checks, so
// no change is ever logged twice. A server keeps the head of its own last
// append and builds the next on it: a registration is one round trip to
// the registry leader when no other server appended meanwhile, two
// (a failed commit, a head read) when one did.
//
// Leaves and their hashes never change once stored; every server caches
// them (bounded), so proofs and checkpoints cost no round trip once warm.
// LogSize always asks the leader: a checkpoint is only ever made from the
// durable, replicated state.

// Registry keys and headers of the log.
const (
	leafPrefix = "leaf."
	headKey    = "log.head"
	legacyKey  = "log.legacy"
	logKeyName = "log.key"
	jobPrefix  = "job."

	hdrLogHashes = "Kez-Log-Hashes"
	hdrLogIndex  = "Kez-Log-Index"
	// hdrCooldown: on a handle's tombstone, the end of its cooldown (unix
	// ms), compared with a new registration's RegisteredAt.
	hdrCooldown = "Kez-Cooldown-Until"
	// hdrBindingOp: on a handle's record, the change that wrote it.
	hdrBindingOp = "Kez-Op"
	hdrKVOp      = "KV-Operation"
)

// Cache bounds: stored hashes (about 80 bytes each with the map, so some
// 20 MiB; proofs and tree hashes mostly read the same upper nodes) and
// leaf data (bytes). Beyond them, random entries are dropped.
const (
	hashCacheMax  = 1 << 18
	entryCacheMax = 16 << 20
	// maxLeavesPerGet is what one direct multi-get may ask (the server
	// answers at most 1024).
	maxLeavesPerGet = 1000
)

func leafKey(n int64) string { return leafPrefix + strconv.FormatInt(n, 10) }

// errBinding: an append's batch failed a check on the binding's keys (the
// log's head had not moved): the caller reads them again.
var errBinding = errors.New("nats: a binding key changed meanwhile")

// logHead is the log's size, the revision of log.head (0: never written)
// and the hashes of its maximal complete subtrees, by stored hash index.
type logHead struct {
	size     int64
	rev      uint64
	frontier map[int64]tlog.Hash
}

type headDoc struct {
	Size     int64       `json:"size"`
	Frontier []tlog.Hash `json:"frontier"`
}

// frontierIndexes are the stored hash indexes of the maximal complete
// subtrees of a tree of size n, largest first.
func frontierIndexes(n int64) []int64 {
	var out []int64
	for l := 62; l >= 0; l-- {
		if n>>l&1 == 1 {
			out = append(out, tlog.StoredHashIndex(l, n>>l-1))
		}
	}
	return out
}

func parseHead(rev uint64, data []byte) (*logHead, error) {
	var doc headDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("nats: decoding the log head: %w", err)
	}
	idx := frontierIndexes(doc.Size)
	if doc.Size < 0 || len(idx) != len(doc.Frontier) {
		return nil, fmt.Errorf("nats: a log head of size %d with %d subtree hashes", doc.Size, len(doc.Frontier))
	}
	h := &logHead{size: doc.Size, rev: rev, frontier: make(map[int64]tlog.Hash, len(idx))}
	for i, x := range idx {
		h.frontier[x] = doc.Frontier[i]
	}
	return h, nil
}

func (h *logHead) encode() ([]byte, error) {
	doc := headDoc{Size: h.size, Frontier: []tlog.Hash{}}
	for _, x := range frontierIndexes(h.size) {
		doc.Frontier = append(doc.Frontier, h.frontier[x])
	}
	return json.Marshal(doc)
}

// next is the head once leaf n = h.size with these stored hashes is added.
func (h *logHead) next(hashes []tlog.Hash) (*logHead, error) {
	n := h.size
	have := maps.Clone(h.frontier)
	first := tlog.StoredHashIndex(0, n)
	for i, x := range hashes {
		have[first+int64(i)] = x
	}
	next := &logHead{size: n + 1, frontier: map[int64]tlog.Hash{}}
	for _, x := range frontierIndexes(n + 1) {
		v, ok := have[x]
		if !ok {
			return nil, fmt.Errorf("nats: log head: no hash at %d for size %d", x, n+1)
		}
		next.frontier[x] = v
	}
	return next, nil
}

// hashReader serves the head's hashes, and any other from the store.
func (s *Store) hashReader(ctx context.Context, h *logHead) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		var rest []int64
		for i, x := range indexes {
			v, ok := h.frontier[x]
			if !ok {
				rest = append(rest, x)
				continue
			}
			out[i] = v
		}
		if len(rest) == 0 {
			return out, nil
		}
		got, err := s.readHashes(ctx, rest)
		if err != nil {
			return nil, err
		}
		j := 0
		for i, x := range indexes {
			if _, ok := h.frontier[x]; !ok {
				out[i] = got[j]
				j++
			}
		}
		return out, nil
	})
}

// readHead reads log.head from the registry leader, remembers it if it is
// the newest seen here, and returns it.
func (s *Store) readHead(ctx context.Context) (*logHead, error) {
	sm, err := s.leaderGet(ctx, s.regName, map[string]any{"last_by_subj": s.regSubj + headKey})
	var h *logHead
	switch {
	case isNotFound(err):
		h = &logHead{frontier: map[int64]tlog.Hash{}}
	case err != nil:
		return nil, err
	default:
		if h, err = parseHead(sm.Seq, sm.Data); err != nil {
			return nil, err
		}
	}
	s.setHead(h)
	return h, nil
}

// setHead keeps h if it is newer than the head known here, and caches its
// subtree hashes.
func (s *Store) setHead(h *logHead) {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.head == nil || h.rev > s.head.rev {
		s.head = h
	}
	for x, v := range h.frontier {
		s.cacheHashLocked(x, v)
	}
}

func (s *Store) cachedHead() *logHead {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return s.head
}

func (s *Store) cacheHashLocked(x int64, v tlog.Hash) {
	if _, ok := s.hashes[x]; ok {
		return
	}
	if len(s.hashes) >= hashCacheMax {
		for k := range s.hashes {
			delete(s.hashes, k)
			break
		}
	}
	s.hashes[x] = v
}

// cacheLeaf remembers leaf n's data and stored hashes.
func (s *Store) cacheLeaf(n int64, data []byte, hashes []tlog.Hash) {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	first := tlog.StoredHashIndex(0, n)
	for i, v := range hashes {
		s.cacheHashLocked(first+int64(i), v)
	}
	if _, ok := s.entries[n]; ok || len(data) > entryCacheMax/4 {
		return
	}
	for s.entryBytes+len(data) > entryCacheMax {
		for k, v := range s.entries {
			delete(s.entries, k)
			s.entryBytes -= len(v)
			break
		}
	}
	s.entries[n] = data
	s.entryBytes += len(data)
}

// lockLog serialises this server's appends (other servers' are
// serialised by the head's revision check).
func (s *Store) lockLog(ctx context.Context) error {
	select {
	case s.logSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store) unlockLog() { <-s.logSem }

// appendLog appends leaf to the log in one atomic batch with the messages
// build returns for its index (the binding change), and returns the index
// and the stream sequence of the batch's first message (the batch's
// messages have consecutive sequences, in order). errBinding: the batch
// failed a check of build's messages, nothing was stored.
func (s *Store) appendLog(ctx context.Context, leaf []byte, build func(n int64) ([]*natsio.Msg, error)) (int64, uint64, error) {
	if err := s.lockLog(ctx); err != nil {
		return 0, 0, err
	}
	defer s.unlockLog()
	head := s.cachedHead()
	if head == nil {
		var err error
		if head, err = s.readHead(ctx); err != nil {
			return 0, 0, err
		}
	}
	for round := 0; ; round++ {
		n := head.size
		hashes, err := tlog.StoredHashes(n, leaf, s.hashReader(ctx, head))
		if err != nil {
			return 0, 0, err
		}
		next, err := head.next(hashes)
		if err != nil {
			return 0, 0, err
		}
		headData, err := next.encode()
		if err != nil {
			return 0, 0, err
		}
		batch, err := build(n)
		if err != nil {
			return 0, 0, err
		}
		leafMsg := s.claim(leafKey(n), leaf)
		leafMsg.Header.Set(hdrLogHashes, encodeHashes(hashes))
		headMsg := natsio.NewMsg(s.regSubj + headKey)
		headMsg.Data = headData
		headMsg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(head.rev, 10))
		batch = append(batch, leafMsg, headMsg)
		ack, err := s.publishBatch(ctx, batch)
		if err == nil {
			next.rev = ack.Seq
			s.setHead(next)
			s.cacheLeaf(n, leaf, hashes)
			return n, ack.Seq - uint64(len(batch)-1), nil
		}
		conflict := isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst)
		if !conflict && (!temporary(err) || errors.Is(err, ErrUnavailable)) {
			return 0, 0, err
		}
		// Another append came first, or a binding key changed, or the
		// answer was lost (the batch may be stored: then its binding
		// checks fail next time).
		fresh, rerr := s.readHead(ctx)
		if rerr != nil {
			return 0, 0, rerr
		}
		if fresh.rev != head.rev {
			head = fresh
			continue
		}
		if conflict && !isCode(err, errCodeWrongLastSeqConst) {
			return 0, 0, errBinding
		}
		// Not stored, or (a replicated stream's "in process") a batch
		// that checks one of the same keys is being stored: look again
		// in a moment.
		if err := sleep(ctx, backoff(round)); err != nil {
			return 0, 0, err
		}
	}
}

func encodeHashes(hs []tlog.Hash) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.String()
	}
	return strings.Join(parts, " ")
}

func decodeHashes(s string) ([]tlog.Hash, error) {
	var out []tlog.Hash
	for f := range strings.FieldsSeq(s) {
		h, err := tlog.ParseHash(f)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// storedHashCount is how many stored hashes leaf n adds.
func storedHashCount(n int64) int {
	return int(tlog.StoredHashCount(n+1) - tlog.StoredHashCount(n))
}

// leafOf names the leaf that stored hash x, and x's position among its
// stored hashes: node (level, i) is completed by the last leaf under it.
func leafOf(x int64) (leaf int64, pos int) {
	level, i := tlog.SplitStoredHashIndex(x)
	return (i+1)<<level - 1, level
}

// readHashes returns the stored hashes at indexes: from the cache, or
// from the leaves that stored them.
func (s *Store) readHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	cached := make([]bool, len(indexes))
	var need []int64
	wanted := map[int64]bool{}
	s.lmu.Lock()
	for i, x := range indexes {
		if x < 0 {
			s.lmu.Unlock()
			return nil, fmt.Errorf("nats: stored hash index %d", x)
		}
		if v, ok := s.hashes[x]; ok {
			out[i], cached[i] = v, true
			continue
		}
		if l, _ := leafOf(x); !wanted[l] {
			wanted[l] = true
			need = append(need, l)
		}
	}
	s.lmu.Unlock()
	if len(need) == 0 {
		return out, nil
	}
	leaves, err := s.fetchLeaves(ctx, need)
	if err != nil {
		return nil, err
	}
	for i, x := range indexes {
		if cached[i] {
			continue
		}
		l, pos := leafOf(x)
		lf, ok := leaves[l]
		if !ok {
			return nil, fmt.Errorf("nats: stored hash %d: leaf %d is not in the log", x, l)
		}
		out[i] = lf.hashes[pos]
	}
	return out, nil
}

// leafMsg is a stored leaf.
type leafMsg struct {
	data   []byte
	hashes []tlog.Hash
}

func (s *Store) parseLeaf(n int64, hdr natsio.Header, data []byte) (leafMsg, error) {
	hs, err := decodeHashes(hdr.Get(hdrLogHashes))
	if err != nil || len(hs) != storedHashCount(n) {
		return leafMsg{}, fmt.Errorf("nats: leaf %d has %d stored hashes, not %d (%v)", n, len(hs), storedHashCount(n), err)
	}
	if tlog.RecordHash(data) != hs[0] {
		return leafMsg{}, fmt.Errorf("nats: leaf %d does not match its hash", n)
	}
	return leafMsg{data: data, hashes: hs}, nil
}

// fetchLeaves reads leaves by direct get (any replica: leaves never
// change) and those a lagging replica lacks from the leader; a leaf the
// leader lacks is left out. Each is cached.
func (s *Store) fetchLeaves(ctx context.Context, ns []int64) (map[int64]leafMsg, error) {
	out := map[int64]leafMsg{}
	for chunk := range slices.Chunk(ns, maxLeavesPerGet) {
		subjects := make([]string, len(chunk))
		for i, n := range chunk {
			subjects[i] = s.regSubj + leafKey(n)
		}
		body, err := json.Marshal(map[string]any{"multi_last": subjects, "batch": len(chunk)})
		if err != nil {
			return nil, err
		}
		msgs, err := retryEach(ctx, s.timeout, func(ctx context.Context) ([]rawMsg, error) {
			msgs, _, err := s.directBatch(ctx, s.regName, body)
			return msgs, err
		})
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			n, err := strconv.ParseInt(strings.TrimPrefix(m.subject, s.regSubj+leafPrefix), 10, 64)
			if err != nil {
				continue
			}
			lf, err := s.parseLeaf(n, m.hdr, m.data)
			if err != nil {
				return nil, err
			}
			out[n] = lf
		}
	}
	for _, n := range ns {
		if _, ok := out[n]; ok {
			continue
		}
		sm, err := s.leaderGet(ctx, s.regName, map[string]any{"last_by_subj": s.regSubj + leafKey(n)})
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		r := rawFromStored(sm)
		lf, err := s.parseLeaf(n, r.hdr, r.data)
		if err != nil {
			return nil, err
		}
		out[n] = lf
	}
	for n, lf := range out {
		s.cacheLeaf(n, lf.data, lf.hashes)
	}
	return out, nil
}

// LogSize is the log's size as the registry leader has it.
func (s *Store) LogSize(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkLog(ctx); err != nil {
		return 0, err
	}
	h, err := s.readHead(ctx)
	if err != nil {
		return 0, err
	}
	return h.size, nil
}

// LogHashes returns stored hashes: cached, or read from their leaves.
func (s *Store) LogHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkLog(ctx); err != nil {
		return nil, err
	}
	return s.readHashes(ctx, indexes)
}

// LogEntries returns up to n leaves from start: from the cache when it
// has them all, else up to the leader's size.
func (s *Store) LogEntries(ctx context.Context, start int64, n int) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkLog(ctx); err != nil {
		return nil, err
	}
	if start < 0 || n <= 0 {
		return [][]byte{}, nil
	}
	out := make([][]byte, 0, min(n, maxLeavesPerGet))
	s.lmu.Lock()
	for i := start; i < start+int64(n); i++ {
		d, ok := s.entries[i]
		if !ok {
			break
		}
		out = append(out, d)
	}
	s.lmu.Unlock()
	if len(out) == n {
		return out, nil
	}
	h, err := s.readHead(ctx)
	if err != nil {
		return nil, err
	}
	end := min(start+int64(n), h.size)
	if start >= end {
		return [][]byte{}, nil
	}
	var need []int64
	for i := start + int64(len(out)); i < end; i++ {
		need = append(need, i)
	}
	leaves, err := s.fetchLeaves(ctx, need)
	if err != nil {
		return nil, err
	}
	for _, i := range need {
		lf, ok := leaves[i]
		if !ok {
			return nil, fmt.Errorf("nats: leaf %d of %d is missing", i, h.size)
		}
		out = append(out, lf.data)
	}
	return out, nil
}

// LogKey returns the log's note signer key, one for every server: made by
// the first server that asks, stored at log.key only if no other server
// stored one first (create-only), else that one is used. The log has one
// key: asked under another name than the stored key's, it is an error
// (the server name changed: the log would need a new origin).
func (s *Store) LogKey(ctx context.Context, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.check(ctx); err != nil {
		return "", err
	}
	s.lmu.Lock()
	k := s.logKey
	s.lmu.Unlock()
	if k == "" {
		var err error
		if k, err = s.loadLogKey(ctx, name); err != nil {
			return "", err
		}
	}
	signer, err := note.NewSigner(k)
	if err != nil {
		return "", fmt.Errorf("nats: the stored log key is not a note signer key: %w", err)
	}
	if signer.Name() != name {
		return "", fmt.Errorf("nats: the log key is named %q, not %q: the server name changed since it was made", signer.Name(), name)
	}
	s.lmu.Lock()
	s.logKey = k
	s.lmu.Unlock()
	return k, nil
}

// loadLogKey reads log.key, making it (named name) if there is none.
func (s *Store) loadLogKey(ctx context.Context, name string) (string, error) {
	data, err := s.getKey(ctx, logKeyName, false)
	for round := 0; isNotFound(err); round++ {
		skey, _, gerr := note.GenerateKey(rand.Reader, name)
		if gerr != nil {
			return "", fmt.Errorf("nats: log key for %q: %w", name, gerr)
		}
		if _, err = s.publish(ctx, s.claim(logKeyName, []byte(skey))); err == nil {
			return skey, nil
		}
		if !isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
			break
		}
		// Another server stores one (or this one did, and the answer
		// was lost): use it, once the leader has it.
		if data, err = s.getKey(ctx, logKeyName, true); isNotFound(err) {
			if serr := sleep(ctx, backoff(round)); serr != nil {
				return "", serr
			}
		}
	}
	return string(data), err
}

// checkLog is check, then waits for the log to hold every binding (see
// migrateLegacy).
func (s *Store) checkLog(ctx context.Context) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	select {
	case <-s.logReady:
		return nil
	default:
	}
	s.startLogWork()
	select {
	case <-s.logReady:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("nats: the binding log is being set up (registrations from before it are being logged): %w", ctx.Err())
	}
}

// startLogWork starts, once, the background work of the log: logging the
// registrations stored before it, then the jobs (see jobs.go).
func (s *Store) startLogWork() {
	s.logOnce.Do(func() { go s.logWork() })
}

// logWork migrates the registrations stored before the log (retrying
// until it succeeds), then runs pending jobs now and every jobsEvery.
func (s *Store) logWork() {
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(s.stopCtx, 10*time.Minute)
		err := s.migrateLegacy(ctx)
		cancel()
		if err == nil {
			close(s.logReady)
			break
		}
		if s.stopCtx.Err() != nil {
			return
		}
		s.log.Warn("logging the registrations stored before the binding log failed; retrying", "error", err)
		if sleep(s.stopCtx, time.Duration(min(attempt+1, 5))*time.Second) != nil {
			return
		}
	}
	for {
		ctx, cancel := context.WithTimeout(s.stopCtx, 5*time.Minute)
		if err := s.runJobs(ctx); err != nil && s.stopCtx.Err() == nil {
			s.log.Warn("binding log jobs", "error", err)
		}
		cancel()
		if sleep(s.stopCtx, jobsEvery) != nil {
			return
		}
	}
}

// migrateLegacy gives every registration stored before the log existed
// (a record without log_index) its leaf, once, in the order of
// registered_at, then handle: each is an append like any other, in one
// batch with the record rewritten with its log_index, on the record's
// revision, so two servers migrating at once log each one once and in
// that order (each goes on to the next only once the previous one is
// logged, by either). log.legacy then marks the work done: later starts
// cost one read. Servers that store records without a log must all be
// stopped before the first one with the log starts.
func (s *Store) migrateLegacy(ctx context.Context) error {
	if !s.nc.IsConnected() {
		return ErrUnavailable
	}
	if err := s.setup(ctx); err != nil {
		return err
	}
	if _, err := s.leaderGet(ctx, s.regName, map[string]any{"last_by_subj": s.regSubj + legacyKey}); err == nil {
		return nil
	} else if !isNotFound(err) {
		return err
	}
	type legacy struct {
		rec storage.Record
		seq uint64
	}
	var todo []legacy
	for since := uint64(0); ; {
		body := fmt.Appendf(nil, `{"seq":%d,"next_by_subj":%q,"batch":256}`, since+1, s.regSubj+"h.>")
		p, err := retryEach(ctx, s.timeout, func(ctx context.Context) (page, error) {
			msgs, more, err := s.directBatch(ctx, s.regName, body)
			return page{msgs, more}, err
		})
		if err != nil {
			return err
		}
		msgs, more := p.msgs, p.more
		for _, m := range msgs {
			since = m.seq
			if kvDeleted(m.hdr.Get(hdrKVOp)) {
				continue
			}
			rec, logged, err := decodeRecord(m.data)
			if err != nil {
				return err
			}
			if !logged {
				todo = append(todo, legacy{rec, m.seq})
			}
		}
		if !more || len(msgs) == 0 {
			break
		}
	}
	slices.SortFunc(todo, func(a, b legacy) int {
		if a.rec.RegisteredAt != b.rec.RegisteredAt {
			return int(max(-1, min(1, a.rec.RegisteredAt-b.rec.RegisteredAt)))
		}
		return strings.Compare(a.rec.Handle, b.rec.Handle)
	})
	if len(todo) > 0 {
		s.log.Info("logging the registrations stored before the binding log", "count", len(todo))
	}
	for _, l := range todo {
		if err := s.logLegacy(ctx, l.rec, l.seq); err != nil {
			return err
		}
	}
	_, err := s.publish(ctx, s.claim(legacyKey, fmt.Appendf(nil, `{"logged":%d,"at":%d}`, len(todo), time.Now().Unix())))
	if err != nil && !isCode(err, errCodeWrongLastSeq, errCodeWrongLastSeqConst) {
		return err
	}
	return nil
}

// page is one answer of a paged direct get.
type page struct {
	msgs []rawMsg
	more bool
}

// logLegacy appends the registration of rec, stored at seq without a log
// index, unless it was logged meanwhile (by another server).
func (s *Store) logLegacy(ctx context.Context, rec storage.Record, seq uint64) error {
	for round := 0; ; round++ {
		_, _, err := s.appendLog(ctx, rec.Registration, func(n int64) ([]*natsio.Msg, error) {
			r := rec
			r.LogIndex = n
			raw, err := encodeRecord(r, 0)
			if err != nil {
				return nil, err
			}
			m := natsio.NewMsg(s.regSubj + handleKey(rec.Handle))
			m.Data = raw
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
			m.Header.Set(hdrBindingOp, "legacy")
			return []*natsio.Msg{m}, nil
		})
		if !errors.Is(err, errBinding) {
			return err
		}
		k, err := s.leaderKey(ctx, handleKey(rec.Handle))
		if err != nil {
			return err
		}
		if k.seq == 0 || k.deleted {
			return nil
		}
		cur, logged, err := decodeRecord(k.data)
		if err != nil || logged {
			return err
		}
		rec, seq = cur, k.seq
		if err := sleep(ctx, backoff(round)); err != nil {
			return err
		}
	}
}

// decodeRecord decodes a stored record; logged is false for one stored
// before the log (without log_index).
func decodeRecord(data []byte) (storage.Record, bool, error) {
	var rec storage.Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return storage.Record{}, false, fmt.Errorf("nats: decode record: %w", err)
	}
	var probe struct {
		LogIndex *int64 `json:"log_index"`
	}
	_ = json.Unmarshal(data, &probe)
	return rec, probe.LogIndex != nil, nil
}

// keyState is a registry key as the leader has it.
type keyState struct {
	seq     uint64 // of its last message; 0: never written (or purged)
	deleted bool   // the last message is a delete marker
	hdr     natsio.Header
	data    []byte
}

func (k keyState) live() bool { return k.seq > 0 && !k.deleted }

// leaderKey reads a registry key from the leader.
func (s *Store) leaderKey(ctx context.Context, key string) (keyState, error) {
	sm, err := s.leaderGet(ctx, s.regName, map[string]any{"last_by_subj": s.regSubj + key})
	if isNotFound(err) {
		return keyState{}, nil
	}
	if err != nil {
		return keyState{}, err
	}
	r := rawFromStored(sm)
	if r.hdr == nil {
		r.hdr = natsio.Header{}
	}
	return keyState{seq: sm.Seq, deleted: kvDeleted(r.hdr.Get(hdrKVOp)), hdr: r.hdr, data: sm.Data}, nil
}
