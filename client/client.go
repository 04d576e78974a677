// Package client talks to a KEZ chat server (SPEC §2) on behalf of one user:
// registration, lookups, end-to-end encrypted sends, inbox paging, the live
// stream and acknowledgement. Every call takes a context; errors from the
// server are *APIError, unreachable servers are *NetworkError.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/kezchat/kez/kez"
)

// Options configures a Client. Only the base URL is required for lookups;
// sending and reading an inbox also need Keys and Handle.
type Options struct {
	// HTTPClient makes the requests; nil means a client without timeouts,
	// since streams are long-lived and every call has a context.
	HTTPClient *http.Client
	// Keys is the user's identity.
	Keys *kez.Keys
	// Handle is the user's own handle on this server.
	Handle string
	// ServerName is the server's name in addresses (the part after @). When
	// empty it is read once from /v1/healthz.
	ServerName string
	// Now is the clock for signed timestamps; nil means time.Now.
	Now func() time.Time
}

// Client is a KEZ client bound to one server. It is safe for concurrent use.
type Client struct {
	base   string // without a trailing slash
	http   *http.Client
	keys   *kez.Keys
	handle string
	now    func() time.Time

	mu         sync.Mutex
	serverName string
}

// New makes a client for the server at baseURL, e.g. "https://kez.lat".
func New(baseURL string, o Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL %q must look like https://host[:port]", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("server URL %q must not have a query or fragment", baseURL)
	}
	c := &Client{
		base:       strings.TrimRight(u.String(), "/"),
		http:       o.HTTPClient,
		keys:       o.Keys,
		handle:     strings.ToLower(o.Handle),
		now:        o.Now,
		serverName: o.ServerName,
	}
	if c.http == nil {
		c.http = &http.Client{}
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// BaseURL is the server URL the client was made with, without trailing slash.
func (c *Client) BaseURL() string { return c.base }

// Handle is the client's own handle ("" if none was given).
func (c *Client) Handle() string { return c.handle }

// Health is the answer of GET /v1/healthz.
type Health struct {
	Server  string `json:"server"`
	Status  string `json:"status"`
	Version string `json:"version"`
}

// Health asks the server whether it is up, and its name.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	if err := c.do(ctx, http.MethodGet, "/v1/healthz", "", nil, "", &h); err != nil {
		return nil, err
	}
	if h.Server == "" {
		return nil, &ProtocolError{URL: c.base + "/v1/healthz", Reason: "no server name; is this a KEZ chat server?"}
	}
	return &h, nil
}

// ServerName is the server's name in addresses, fetched once from /v1/healthz
// unless Options.ServerName gave it.
func (c *Client) ServerName(ctx context.Context) (string, error) {
	c.mu.Lock()
	name := c.serverName
	c.mu.Unlock()
	if name != "" {
		return name, nil
	}
	h, err := c.Health(ctx)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.serverName = h.Server
	c.mu.Unlock()
	return h.Server, nil
}

// Address is the client's own handle@server.
func (c *Client) Address(ctx context.Context) (string, error) {
	if c.handle == "" {
		return "", errors.New("client has no handle")
	}
	name, err := c.ServerName(ctx)
	if err != nil {
		return "", err
	}
	return kez.Address(c.handle, name), nil
}

// ErrNoIdentity is returned by calls that need Options.Keys and Handle.
var ErrNoIdentity = errors.New("client needs keys and a handle for this call")

// signed makes an auth value for a request by the client's own identity.
func (c *Client) signed(msg func(handle string, ts int64) string) (string, error) {
	if c.keys == nil || c.handle == "" {
		return "", ErrNoIdentity
	}
	ts := c.now().Unix()
	return kez.SignAuth(c.keys.Private(), msg(c.handle, ts), ts), nil
}

// maxBody bounds a successful answer: an inbox page of 500 envelopes of
// 256 KiB each, with room for a larger configured envelope limit.
const maxBody = 512 << 20

// do sends one request and decodes a 2xx JSON answer into out.
// pathAndQuery must already be escaped.
func (c *Client) do(ctx context.Context, method, pathAndQuery, auth string, body []byte, contentType string, out any) error {
	resp, err := c.send(ctx, method, pathAndQuery, auth, body, contentType, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(out); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &ProtocolError{URL: c.base + pathAndQuery, Reason: "body is not the expected JSON: " + err.Error()}
	}
	return nil
}

// send performs the request and turns transport failures and non-2xx
// answers into errors; on success the caller owns resp.Body.
func (c *Client) send(ctx context.Context, method, pathAndQuery, auth string, body []byte, contentType, accept string) (*http.Response, error) {
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+pathAndQuery, reader)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("X-KEZ-Auth", auth)
	}
	if method == http.MethodPost {
		// Both POSTs of the API may be sent twice: a registration retry
		// gets 200 with the same record, and a message stored twice shows
		// once (clients de-duplicate by id, SPEC §3). Saying so lets Go's
		// transport resend a POST that went out on a keep-alive connection
		// the server was closing, as `caddy reload` does, and never answered.
		req.Header.Set("Idempotency-Key", idempotencyKey())
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

// idempotencyKey names one logical request (the Idempotency-Key header of
// draft-ietf-httpapi-idempotency-key-header): 128 random bits.
func idempotencyKey() string { return rand.Text() }
