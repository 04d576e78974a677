package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kezchat/kez/kez"
)

// ErrNoIdentity is returned by calls that need Options.Keys and Handle.
var ErrNoIdentity = errors.New("client needs keys and a handle for this call")

// call is one API request, which may take several attempts.
type call struct {
	method string
	// path is the path as routed, which a signature covers
	// (/v1/inbox/alice/contacts/ed25519:…); each segment is escaped for the
	// URL unless escaped gives the URL's path.
	path    string
	escaped string
	// query is the request's query, in canonical form (SPEC §2.0) both in
	// the URL and in the signature. rawQuery is an unsigned one, already
	// encoded, for unsigned calls (WebFinger).
	query    map[string]uint64
	rawQuery string
	body     []byte // sent as application/json when not nil
	accept   string // default application/json
	// signed: the request acts for the user and carries X-KEZ-Auth,
	// signed afresh for every attempt.
	signed bool
	// resend: the request may reach the server twice with no effect the
	// second time (POST /v1/messages: an envelope already stored is answered
	// with its original receipt). It carries an Idempotency-Key, so that Go's
	// transport resends it when a reused connection closes unanswered (as
	// `caddy reload` does), and a network error is retried with a fresh
	// signature.
	resend bool

	idempotencyKey string
}

// maxReused bounds the attempts of a signed call refused as "signature
// already used": each is signed one second later than the last, so this
// many processes of one user may sign the same request in the same second.
const maxReused = 5

// resendWaits are the pauses before the second and third attempt of a
// resendable call that met a network error.
var resendWaits = []time.Duration{250 * time.Millisecond, time.Second}

// maxBody bounds a successful answer: an inbox page of 500 envelopes of
// 256 KiB each, with room for a larger configured envelope limit.
const maxBody = 512 << 20

// maxRemoteBody bounds an answer from another server (SPEC §8), which only
// ever sends records, checkpoints, proofs and log pages to this client:
// a page of 1000 log entries is well under it.
const maxRemoteBody = 16 << 20

// bodyLimit is the largest answer this client reads.
func (c *Client) bodyLimit() int {
	if c.home != nil {
		return maxRemoteBody
	}
	return maxBody
}

// do runs the call and hands a 2xx answer's body to parse (nil: the body is
// not read, as for 204). A body parse refuses becomes a *ProtocolError.
// It returns the answer's status.
func (c *Client) do(ctx context.Context, cl *call, parse func([]byte) error) (int, error) {
	resp, err := c.roundTrip(ctx, cl)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if parse == nil {
		return resp.StatusCode, nil
	}
	limit := c.bodyLimit()
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	switch {
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case err != nil:
		return 0, &NetworkError{URL: c.base, Err: unwrapURLError(err)}
	case len(b) > limit:
		return 0, &ProtocolError{URL: c.base + cl.urlPath(), Reason: "the answer is larger than " + strconv.Itoa(limit>>20) + " MiB"}
	}
	if err := parse(b); err != nil {
		return 0, &ProtocolError{URL: c.base + cl.urlPath(), Reason: err.Error()}
	}
	return resp.StatusCode, nil
}

// roundTrip runs the attempts of a call until one is answered with 2xx or
// another attempt would not help. On success the caller owns resp.Body.
//
// A signed call refused with 401 is signed again and tried once more, and
// up to maxReused times while the server says the signature was used: the
// server accepts a signature once (SPEC §2.0), and the refused one may have
// been spent by an attempt that never came back, which Go's transport
// resends as it was (it does so for a GET on a keep-alive connection that
// closes unanswered), or by other processes of the same user that signed
// the same request in the same second (kez inbox, then kez requests). Each
// new attempt is signed a second later. A 401 means the server did nothing.
func (c *Client) roundTrip(ctx context.Context, cl *call) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		resp, err := c.attempt(ctx, cl)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var apiErr *APIError
		var netErr *NetworkError
		switch {
		case cl.signed && errors.As(err, &apiErr) && apiErr.Status == http.StatusUnauthorized &&
			(attempt == 0 || attempt+1 < maxReused && strings.Contains(apiErr.Message, "already used")):
			continue
		case cl.resend && attempt < len(resendWaits) && errors.As(err, &netErr):
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(resendWaits[attempt]):
			}
		default:
			return nil, err
		}
	}
}

// attempt sends the call once and turns transport failures and non-2xx
// answers into errors.
func (c *Client) attempt(ctx context.Context, cl *call) (*http.Response, error) {
	u := c.base + cl.urlPath()
	if q := kez.CanonicalQuery(cl.query); q != "" {
		u += "?" + q
	} else if cl.rawQuery != "" {
		u += "?" + cl.rawQuery
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body) // sets GetBody: the transport may resend it
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, body)
	if err != nil {
		return nil, err
	}
	accept := cl.accept
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	if cl.body != nil {
		req.Header.Set("Content-Type", jsonType)
	}
	if cl.signed {
		auth, err := c.sign(ctx, cl)
		if err != nil {
			return nil, err
		}
		req.Header.Set("X-KEZ-Auth", auth)
	}
	if cl.resend {
		if cl.idempotencyKey == "" {
			cl.idempotencyKey = rand.Text()
		}
		req.Header.Set("Idempotency-Key", cl.idempotencyKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &NetworkError{URL: c.base, Err: unwrapURLError(err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return nil, apiError(resp.StatusCode, resp.Header, b)
	}
	return resp, nil
}

// urlPath is the call's path as it goes in the URL.
func (cl *call) urlPath() string {
	if cl.escaped != "" {
		return cl.escaped
	}
	segments := strings.Split(cl.path, "/")
	for i, s := range segments {
		segments[i] = url.PathEscape(s)
	}
	return strings.Join(segments, "/")
}

// sign makes the X-KEZ-Auth value of one attempt (SPEC §2.0): a signature
// by the user's key over the server's name, the method, the path, the
// canonical query and the body's hash, at a timestamp this client has not
// used for the same request, so the signed string is new every time.
func (c *Client) sign(ctx context.Context, cl *call) (string, error) {
	keys := c.Keys()
	if keys == nil {
		return "", ErrNoIdentity
	}
	server, err := c.ServerName(ctx)
	if err != nil {
		return "", err
	}
	req := kez.Request{Server: server, Method: cl.method, Path: cl.path, Query: kez.CanonicalQuery(cl.query),
		BodyHash: kez.BodySHA256(cl.body)}
	ts := c.stamps.next(kez.OnceKey(req.Message(0)), c.now().Unix())
	return req.Sign(keys.Private(), time.Unix(ts, 0)), nil
}

// stamper hands out signature timestamps: the current second, unless this
// client already signed the same request at that second or later, then one
// second after that. The server accepts a signed string once; Ed25519 is
// deterministic, so the same request signed twice in one second would be
// the same string, refused the second time. Only requests signed at the
// current second or later are remembered.
type stamper struct {
	mu   sync.Mutex
	sec  int64              // the second of the last pruning
	used map[[32]byte]int64 // request (without timestamp) → its latest timestamp
}

func (s *stamper) next(request [32]byte, now int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used == nil {
		s.used = make(map[[32]byte]int64)
	}
	if now != s.sec {
		for k, ts := range s.used {
			if ts < now {
				delete(s.used, k)
			}
		}
		s.sec = now
	}
	ts := now
	if last, ok := s.used[request]; ok && last >= ts {
		ts = last + 1
	}
	s.used[request] = ts
	return ts
}

// unwrapURLError drops *url.Error's "Get \"http://…\":" prefix; NetworkError
// already names the server.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

const jsonType = "application/json; charset=utf-8"
