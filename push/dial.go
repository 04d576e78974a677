package push

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/kezchat/kez/internal/netguard"
)

// newClient is the HTTP client of pushes: no proxy from the environment,
// no redirects, every connection checked when it is made (so a name that
// resolves to a private address, now or after a rebinding, is refused),
// small header and connection limits. Time limits are the caller's
// context's.
func newClient(allowPrivate bool) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if !allowPrivate {
		dialer.Control = netguard.Control
	}
	transport := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    5 * time.Second,
		ResponseHeaderTimeout:  PushTimeout,
		MaxResponseHeaderBytes: 16 << 10,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    Concurrency,
		MaxConnsPerHost:        Concurrency,
		IdleConnTimeout:        90 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	return &http.Client{
		Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
