package main

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kezchat/kez/kez"
)

// sealSized seals a real text message from sender to recipient whose
// envelope, as sent (compact JSON), is size bytes long, or size-1 when
// base64url cannot reach size exactly (it never yields lengths ≡ 1 mod 4).
func sealSized(link *kez.Link, fromAddr string, size int) ([]byte, error) {
	env, _, err := sizeText(link, fromAddr, size)
	return env, err
}

// sealText seals a text message of textLen bytes. Every plaintext of one
// sender with the same text length has the same length (the id is
// fixed-size and sent_at is 0), so its envelope has the same size.
func sealText(link *kez.Link, fromAddr string, textLen int) ([]byte, error) {
	msg := kez.NewTextMessage(fromAddr, strings.Repeat("x", textLen), 0)
	env, err := link.Seal(msg.Marshal())
	if err != nil {
		return nil, err
	}
	return env.AppendJSON(nil), nil
}

// sizeText finds the text length that makes an envelope of size bytes (or
// size-1), and returns one such envelope with it.
func sizeText(link *kez.Link, fromAddr string, size int) ([]byte, int, error) {
	empty, err := sealText(link, fromAddr, 0)
	if err != nil {
		return nil, 0, err
	}
	if len(empty) > size {
		return nil, 0, fmt.Errorf("an envelope cannot be as small as %d bytes (an empty one is %d)", size, len(empty))
	}
	// Every plaintext byte adds 4/3 of a byte of base64url; start from that
	// estimate and correct by the measured difference a few times.
	textLen := (size - len(empty)) * 3 / 4
	var best []byte
	bestLen := 0
	for range 8 {
		env, err := sealText(link, fromAddr, textLen)
		if err != nil {
			return nil, 0, err
		}
		switch d := size - len(env); {
		case d == 0:
			return env, textLen, nil
		case d > 0:
			if len(env) > len(best) {
				best, bestLen = env, textLen
			}
			textLen += max(d*3/4, 1)
		default:
			textLen -= max(-d*3/4, 1)
		}
		if best != nil && size-len(best) == 1 {
			return best, bestLen, nil
		}
	}
	if best == nil {
		return nil, 0, fmt.Errorf("could not size an envelope to %d bytes", size)
	}
	return best, bestLen, nil
}

// authSkew is the server's auth_skew (SPEC §4; Caddyfile.bench keeps the
// default): a request signed at ts is accepted while |ts - now| <= 60 s.
const authSkew = 60 * time.Second

// signMargin is kept between a pre-signed timestamp and the edge of
// authSkew, for a request that waits in queues before the server checks it.
const signMargin = 15 * time.Second

// presigned is one send, ready before the clock starts: the POST
// /v1/messages body, the envelope within it, and the body's X-KEZ-Auth.
type presigned struct {
	body []byte // {"to":"<handle>","envelope":<env>}
	env  []byte // the envelope, a part of body
	auth string // made by pool.sign; "" before
}

// pool holds pre-sealed envelopes per recipient, as whole send bodies, so
// sealing (client CPU) is done before the clock starts and is not part of
// any measurement; pool.sign then signs them, also before the clock. Each
// is sent once: a v2 server stores an envelope once and answers it again
// with its original receipt (SPEC §2.5), so a repeated one would measure
// nothing.
type pool struct {
	byRecipient [][]presigned // recipient index in the scenario → sends
	users       []*user
	server      string
	// validUntil is when the pre-made signatures come within signMargin of
	// authSkew; a send after it is signed when it is sent (counted in
	// signedLate), so a long -duration still works.
	validUntil time.Time
	signedLate atomic.Int64
}

// sender is who sends to users[i] in a scenario: the next user.
func sender(users []*user, i int) *user { return users[(i+1)%len(users)] }

// sealPool seals perLink distinct envelopes of size bytes for each
// recipient i in users, from sender(users, i), with a few goroutines.
func sealPool(users []*user, server string, size, perLink int) (*pool, error) {
	p := &pool{byRecipient: make([][]presigned, len(users)), users: users, server: server}
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, to := range users {
		from := sender(users, i)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			envs, err := sealFor(from, to, server, size, perLink)
			sends := make([]presigned, len(envs))
			for k, env := range envs {
				sends[k] = sendBody(to.handle, env)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			p.byRecipient[i] = sends
		})
	}
	wg.Wait()
	return p, firstErr
}

// sendBody wraps env in the body of POST /v1/messages. Handles are
// [a-z0-9_-] and need no escaping.
func sendBody(handle string, env []byte) presigned {
	body := make([]byte, 0, len(env)+len(handle)+24)
	body = append(body, `{"to":"`...)
	body = append(body, handle...)
	body = append(body, `","envelope":`...)
	start := len(body)
	body = append(body, env...)
	end := len(body)
	body = append(body, '}')
	return presigned{body: body, env: body[start:end:end]}
}

// request is what a send's signature covers (SPEC §2.0).
func (p *pool) request(s *presigned) kez.Request {
	return kez.Request{Server: p.server, Method: "POST", Path: "/v1/messages", Body: s.body}
}

// sign signs every send of the pool by its sender, before the clock starts,
// all at one timestamp: the middle of the sending window that begins now and
// lasts window (or as far into it as authSkew allows), so that each is
// still fresh when it is sent. It returns how long signing took.
func (p *pool) sign(window time.Duration) time.Duration {
	start := time.Now()
	ts := start.Add(min(window/2, authSkew-signMargin))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(p.byRecipient) {
					return
				}
				priv := sender(p.users, i).keys.Private()
				sends := p.byRecipient[i]
				for k := range sends {
					req := p.request(&sends[k])
					sends[k].auth = req.Sign(priv, ts)
				}
			}
		})
	}
	wg.Wait()
	p.validUntil = ts.Add(authSkew - signMargin)
	return time.Since(start)
}

// auth is the X-KEZ-Auth of the k-th send to recipient i: the one made
// ahead, or a fresh one once that is too old (or was never made).
func (p *pool) auth(i int, s *presigned) string {
	if s.auth != "" && time.Now().Before(p.validUntil) {
		return s.auth
	}
	p.signedLate.Add(1)
	req := p.request(s)
	return req.Sign(sender(p.users, i).keys.Private(), time.Now())
}
func sealFor(from, to *user, server string, size, n int) ([][]byte, error) {
	link, err := from.keys.LinkTo(to.keys.Primary())
	if err != nil {
		return nil, err
	}
	addr := kez.Address(from.handle, server)
	first, textLen, err := sizeText(link, addr, size)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([][]byte, n)
	out[0] = first
	for k := 1; k < n; k++ {
		if out[k], err = sealText(link, addr, textLen); err != nil {
			return nil, err
		}
	}
	return out, nil
}
