// Package client talks to a KEZ chat server (SPEC §2, protocol v2) on behalf
// of one user: registration, lookups, end-to-end encrypted sends, inbox
// paging, the live stream, acknowledgement and the contact lists. Every
// request that acts for the user is signed (SPEC §2.0) afresh on every
// attempt. Every call takes a context; errors from the server are *APIError,
// unreachable servers are *NetworkError, answers that are not what SPEC §2
// says (unknown or case-variant members, duplicates) are *ProtocolError.
//
// Users of other servers (SPEC §8) are named by address, "bob@two.example",
// wherever a handle is taken: the client looks them up and sends to them at
// their own server, verifying their records there under that server's own
// pinned log key (see Remote, Sender, Deliver).
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	// ServerName is the server's name in addresses (the part after @), which
	// every request signature covers. When empty it is read once from
	// /v1/healthz (or taken from the record of a registration).
	ServerName string
	// Now is the clock for signed timestamps; nil means time.Now.
	Now func() time.Time

	// Trust keeps what the client learns about the server's binding log
	// and its contacts' keys (SPEC §5, §6) between runs; nil keeps it in
	// memory for the life of the Client only.
	Trust TrustStore
	// LogKey is the server's log verifier key as the user got it from a
	// source they trust; empty means it is pinned at first contact from
	// GET /v1/log/key. A key already pinned that differs is an error.
	LogKey string
	// OldKeys are the user's earlier keys on this server (after a
	// rotation), kept to open messages sealed to them before it.
	OldKeys []*kez.Keys
	// Resolve maps other servers' names to their API base URLs
	// ("two.example" → "http://127.0.0.1:8081"), for tests and private
	// networks (SPEC §8: kez --resolve, federation_resolve). A server not
	// named is found by WebFinger, else at https://<server>.
	Resolve map[string]string
}

// Client is a KEZ client bound to one server. It is safe for concurrent use.
type Client struct {
	base   string // without a trailing slash
	http   *http.Client
	handle string
	now    func() time.Time
	trust  TrustStore
	logKey string

	mu         sync.Mutex
	serverName string
	keys       *kez.Keys   // changed by Rotate
	oldKeys    []*kez.Keys // keys before rotations, to open older messages

	stamps stamper // the timestamps of recent signatures, so none repeats

	// Federation (SPEC §8). A remote client speaks to another server for
	// this user: home is the user's own client, whose keys it signs with
	// and in whose trust store it keeps its state. remotes are the remote
	// clients made so far, by server name.
	home     *Client
	resolve  map[string]string
	remotes  map[string]*Client
	accepted map[string]bool // remote contacts accepted at home by this client
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
		oldKeys:    o.OldKeys,
		handle:     strings.ToLower(o.Handle),
		now:        o.Now,
		serverName: o.ServerName,
		trust:      o.Trust,
		logKey:     strings.TrimSpace(o.LogKey),
		resolve:    map[string]string{},
		remotes:    map[string]*Client{},
		accepted:   map[string]bool{},
	}
	for name, base := range o.Resolve {
		if err := checkBase(base); err != nil || !ValidServerName(kez.ASCIILower(name)) {
			return nil, fmt.Errorf("resolve %q to %q: a server name and its http(s) base URL are needed", name, base)
		}
		c.resolve[kez.ASCIILower(name)] = strings.TrimRight(base, "/")
	}
	if c.trust == nil {
		c.trust = MemoryTrust()
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

// Keys is the client's identity (nil if none was given); after Rotate, the
// new key.
func (c *Client) Keys() *kez.Keys {
	if c.home != nil {
		return c.home.Keys()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys
}

// Health is the answer of GET /v1/healthz.
type Health struct {
	Server   string `json:"server"`
	Status   string `json:"status"`
	Version  string `json:"version"`
	Protocol int    `json:"protocol"` // 2 for a v2 server, 0 when not said (v1)
	LogKey   string `json:"log_key"`  // the verifier key of the binding log (SPEC §5)
}

// Health asks the server whether it is up, and its name. It is read
// leniently (encoding/json): it carries nothing that is signed or shown as
// someone's words, and operators may add members.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	_, err := c.do(ctx, &call{method: http.MethodGet, path: "/v1/healthz"}, func(b []byte) error { return json.Unmarshal(b, &h) })
	if err != nil {
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
	c.learnServerName(h.Server)
	return h.Server, nil
}

// learnServerName caches the server's name unless one is known already.
func (c *Client) learnServerName(name string) {
	c.mu.Lock()
	if c.serverName == "" {
		c.serverName = name
	}
	c.mu.Unlock()
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
