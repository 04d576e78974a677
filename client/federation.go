package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/kezchat/kez/kez"
)

// Federation (SPEC §8): a user of one server writes to users of another.
// The client looks the recipient up at the recipient's server, verifies
// the record there exactly like a local one (under that server's own log
// key, pinned at first contact and kept in TrustState.Remotes), and posts
// the envelope there itself, signed for that server, with its own address
// as from_addr. A remote client is a Client for the other server that
// signs with this user's keys and keeps its trust in this client's store.

// APIRel is the WebFinger link relation that names a server's API base.
const APIRel = "urn:kez:api"

// maxServerName bounds a server name (a DNS name, maybe with a port).
const maxServerName = 253 + 6

// ValidServerName reports whether s can be the server part of an address:
// lower-case letters, digits, '-' and '.', optionally ":port", nothing that
// could make a URL point elsewhere (no '@', '/', '?', '#', '%', spaces).
func ValidServerName(s string) bool {
	host, port, hasPort := strings.Cut(s, ":")
	if host == "" || len(s) > maxServerName || host[0] == '.' || host[0] == '-' || strings.HasSuffix(host, ".") || strings.Contains(host, "..") {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	if !hasPort {
		return true
	}
	if port == "" || len(port) > 5 || port[0] == '0' {
		return false
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	return true
}

// publicName reports whether server is a name a client may reach without
// being told where (Options.Resolve): not an IP address, not localhost.
func publicName(server string) bool {
	host, _, _ := strings.Cut(server, ":")
	return net.ParseIP(host) == nil && host != "localhost" && !strings.HasSuffix(host, ".localhost")
}

// checkBase checks an API base URL as New does.
func checkBase(base string) error {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return fmt.Errorf("server URL %q must look like https://host[:port]", base)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("server URL %q must not have a query or fragment", base)
	}
	return nil
}

// IsRemote reports whether this client speaks to another server than the
// user's own (one made by Remote).
func (c *Client) IsRemote() bool { return c.home != nil }

// homeName is the user's own server name as far as known without asking
// (Options.ServerName, or learned since).
func (c *Client) homeName() string {
	if c.home != nil {
		return c.home.homeName()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.serverName
}

// isOther reports whether server names another server than this client's
// home: not empty and not its name. When the home name is not known yet, it
// is asked for.
func (c *Client) isOther(ctx context.Context, server string) (bool, error) {
	if server == "" {
		return false, nil
	}
	name := c.homeName()
	if name == "" {
		var err error
		if name, err = c.ServerName(ctx); err != nil {
			return false, err
		}
	}
	return server != name, nil
}

// route finds the client that speaks for who ("bob", "bob@server") and
// who's bare handle: this one for a local user, a remote client otherwise.
func (c *Client) route(ctx context.Context, who string) (*Client, string, error) {
	handle, server := kez.SplitAddress(who)
	if c.home != nil {
		if server != "" && server != c.serverName {
			return nil, "", errNested
		}
		return c, handle, nil
	}
	other, err := c.isOther(ctx, server)
	if err != nil || !other {
		return c, handle, err
	}
	rc, err := c.remote(ctx, server, handle)
	return rc, handle, err
}

// Remote is the client for the server of address ("bob@two.example", or
// "@two.example" for the server alone): this client itself for its own
// server. It looks users up, verifies their records under that server's
// own log key and sends to them, signing with this user's keys; what it
// learns is kept in TrustState.Remotes of this client's store.
func (c *Client) Remote(ctx context.Context, address string) (*Client, error) {
	handle, server := kez.SplitAddress(address)
	if c.home != nil {
		return c.home.Remote(ctx, address)
	}
	other, err := c.isOther(ctx, server)
	if err != nil || !other {
		return c, err
	}
	return c.remote(ctx, server, handle)
}

// remote makes (once) the client of server; handle, when known, is whom
// WebFinger is asked about.
func (c *Client) remote(ctx context.Context, server, handle string) (*Client, error) {
	if !ValidServerName(server) {
		return nil, fmt.Errorf("%.80q is not a server name", server)
	}
	c.mu.Lock()
	rc := c.remotes[server]
	c.mu.Unlock()
	if rc != nil {
		return rc, nil
	}
	base, final, err := c.resolveBase(ctx, server, handle)
	if err != nil {
		return nil, err
	}
	rc, err = New(base, Options{HTTPClient: c.http, ServerName: server, Now: c.now, Trust: remoteTrust{home: c.trust, server: server}})
	if err != nil {
		return nil, err
	}
	rc.home = c
	if !final {
		return rc, nil // found without WebFinger's answer: ask again next time
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if kept := c.remotes[server]; kept != nil {
		return kept, nil
	}
	c.remotes[server] = rc
	return rc, nil
}

// ResolveServer finds the API base of server (SPEC §8): Options.Resolve,
// else the urn:kez:api link of its WebFinger answer about handle, else
// https://<server>.
func (c *Client) ResolveServer(ctx context.Context, server, handle string) (string, error) {
	base, _, err := c.resolveBase(ctx, server, handle)
	return base, err
}

// resolveBase is ResolveServer; final is false when WebFinger could not be
// asked (no handle to ask about, or the server did not answer), so the
// default https://<server> is a guess to try again later.
func (c *Client) resolveBase(ctx context.Context, server, handle string) (base string, final bool, err error) {
	if !ValidServerName(server) {
		return "", false, fmt.Errorf("%.80q is not a server name", server)
	}
	if base, ok := c.resolve[server]; ok {
		return base, true, checkBase(base)
	}
	if c.home != nil {
		return c.home.resolveBase(ctx, server, handle)
	}
	if !publicName(server) {
		// An address in a message can name any server: it must not send
		// this client to the machines of its own network.
		return "", false, fmt.Errorf("%q is not a public server name; to reach it, map it to its URL (kez --resolve)", server)
	}
	fallback := "https://" + server
	if !kez.ValidHandle(handle) {
		return fallback, false, nil
	}
	wf, err := New(fallback, Options{HTTPClient: c.http, ServerName: server})
	if err != nil {
		return "", false, err
	}
	wf.home = c // another server's answer: read within maxRemoteBody
	jrd, err := wf.WebFinger(ctx, kez.Address(handle, server))
	var apiErr *APIError
	switch {
	case ctx.Err() != nil:
		return "", false, ctx.Err()
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound:
		return fallback, true, nil // it answers: no such user, no link
	case err != nil:
		return fallback, false, nil
	}
	href, err := apiLink(jrd)
	if err != nil {
		return "", false, &ProtocolError{URL: fallback + "/.well-known/webfinger", Reason: err.Error()}
	}
	if href == "" {
		return fallback, true, nil
	}
	return href, true, nil
}

// apiLink is the urn:kez:api href of a JRD ("" when it has none). It must
// be https: a WebFinger answer fetched over https does not send the user to
// a plain-text API.
func apiLink(jrd *JRD) (string, error) {
	for _, l := range jrd.Links {
		if l.Rel != APIRel {
			continue
		}
		href := strings.TrimRight(l.Href, "/")
		if err := checkBase(href); err != nil || !strings.HasPrefix(href, "https://") {
			return "", fmt.Errorf("its %s link %.120q is not an https base URL", APIRel, l.Href)
		}
		return href, nil
	}
	return "", nil
}

// display names a handle of this client's server for the user: the bare
// handle at home, handle@server for a remote server.
func (c *Client) display(handle string) string {
	if c.home == nil {
		return handle
	}
	return kez.Address(handle, c.serverName)
}

// trustFor is the trust store and bare handle of who ("bob" or
// "bob@server") without asking any server: pins of remote contacts are in
// their server's remote state.
func (c *Client) trustFor(who string) (TrustStore, string) {
	handle, server := kez.SplitAddress(who)
	if c.home != nil || server == "" || server == c.homeName() {
		return c.trust, handle
	}
	return remoteTrust{home: c.trust, server: server}, handle
}

// RemoteServers are the names of the other servers this client keeps
// trust state for, in no particular order.
func (c *Client) RemoteServers() ([]string, error) {
	st, err := c.trust.Load()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(st.Remotes))
	for name := range st.Remotes {
		out = append(out, name)
	}
	return out, nil
}
