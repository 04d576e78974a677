package federation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/kezchat/kez/kez"

	"github.com/kezchat/kez/internal/netguard"
)

// The outbound fetch rules of SPEC §8.
const (
	FetchTimeout = 5 * time.Second // per fetch, connection included
	MaxFetchBody = 64 << 10        // a larger answer is refused
	MaxFetches   = 16              // running at once; more are refused
)

// fetcher makes the outbound requests, under the rules.
type fetcher struct {
	resolve      map[string]string // server → base, trusted by the operator
	allowPrivate bool              // tests: any scheme and address
	public       *http.Client      // checks every address it dials
	trusted      *http.Client      // for bases from resolve, and allowPrivate
	slots        chan struct{}
	lookup       func(ctx context.Context, host string) ([]netip.Addr, error)
}

func newFetcher(resolve map[string]string, allowPrivate bool) *fetcher {
	f := &fetcher{resolve: resolve, allowPrivate: allowPrivate, slots: make(chan struct{}, MaxFetches),
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}}
	f.public = newHTTPClient(netguard.Control) // checked on every address dialed
	f.trusted = newHTTPClient(nil)
	return f
}

func newHTTPClient(control func(network, address string, c syscall.RawConn) error) *http.Client {
	dialer := &net.Dialer{Timeout: FetchTimeout, Control: control}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // a proxy would dial for us, unchecked
			DialContext:            dialer.DialContext,
			TLSHandshakeTimeout:    FetchTimeout,
			ResponseHeaderTimeout:  FetchTimeout,
			MaxResponseHeaderBytes: 16 << 10,
			MaxIdleConnsPerHost:    4,
			IdleConnTimeout:        90 * time.Second,
			ForceAttemptHTTP2:      true,
		},
		// Redirects are not followed: one could lead to loopback.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Errors of the three kinds SPEC §8 names.
func refused(format string, args ...any) error {
	return kez.Errorf(kez.CodeFederationRefused, format, args...)
}

func unverified(format string, args ...any) error {
	return kez.Errorf(kez.CodeSenderUnverified, format, args...)
}

func unverifiable(format string, args ...any) error {
	return kez.Errorf(kez.CodeSenderUnverifiable, format, args...)
}

// admit checks, without connecting to it, that server may be fetched
// from: named by federation_resolve, or (unless allowPrivate) a name that
// resolves only to public addresses.
func (f *fetcher) admit(ctx context.Context, server string) error {
	if !ValidServerName(server) {
		return refused("%.80q is not a server name", server)
	}
	if _, ok := f.resolve[server]; ok || f.allowPrivate {
		return nil
	}
	if a, err := netip.ParseAddr(server); err == nil {
		if !netguard.Public(a) {
			return refused("%s is not a public address", server)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	addrs, err := f.lookup(ctx, server)
	if err != nil || len(addrs) == 0 {
		return refused("%s cannot be resolved", server)
	}
	for _, a := range addrs {
		if !netguard.Public(a) {
			return refused("%s resolves to %s, not a public address", server, a)
		}
	}
	return nil
}

// checkBase checks a base URL another server named (its WebFinger link):
// https (or anything, for tests), a host, no userinfo, query or fragment.
func (f *fetcher) checkBase(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", fmt.Errorf("API base %.120q is not a URL like https://host[/path]", raw)
	}
	if u.Scheme != "https" && !(f.allowPrivate && u.Scheme == "http") {
		return "", fmt.Errorf("API base %.120q is not https", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// answer is what a fetch got: a status and at most MaxFetchBody bytes.
type answer struct {
	status int
	body   []byte
}

// get fetches rawURL under the rules: a free slot, FetchTimeout for the
// whole exchange, no redirects, a body of at most MaxFetchBody bytes. An
// error is sender_unverifiable (the remote side may recover).
func (f *fetcher) get(ctx context.Context, rawURL string, trusted bool) (*answer, error) {
	select {
	case f.slots <- struct{}{}:
		defer func() { <-f.slots }()
	default:
		return nil, unverifiable("%d fetches from other servers are running already; try again shortly", MaxFetches)
	}
	ctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, unverifiable("bad URL %.120q", rawURL)
	}
	req.Header.Set("Accept", "application/json, application/jrd+json, text/plain")
	req.Header.Set("User-Agent", "kez-chat-federation")
	client := f.public
	if trusted || f.allowPrivate {
		client = f.trusted
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, unverifiable("cannot fetch %s: %s", redact(rawURL), shortNetErr(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxFetchBody+1))
	if err != nil {
		return nil, unverifiable("reading %s: %s", redact(rawURL), shortNetErr(err))
	}
	if len(body) > MaxFetchBody {
		return nil, unverifiable("the answer of %s is larger than %d bytes", redact(rawURL), MaxFetchBody)
	}
	return &answer{status: resp.StatusCode, body: body}, nil
}

// redact is a URL for a message: without its query.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "a bad URL"
	}
	u.RawQuery = ""
	return u.String()
}

func shortNetErr(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer within %s", FetchTimeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}
