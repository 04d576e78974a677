package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestAPIErrorFromKEZBody(t *testing.T) {
	h := http.Header{"Retry-After": {"7"}}
	e := apiError(429, h, []byte(`{"error":{"code":"rate_limited","message":"slow down"}}`))
	if e.Status != 429 || e.Code != "rate_limited" || e.Message != "slow down" || e.RetryAfter != 7*time.Second {
		t.Errorf("apiError = %+v", e)
	}
	if !errors.Is(e, ErrRateLimited) || errors.Is(e, ErrNotFound) {
		t.Error("errors.Is does not match by code")
	}
	wrapped := errors.Join(errors.New("context"), e)
	if CodeOf(wrapped) != "rate_limited" || !errors.Is(wrapped, ErrRateLimited) {
		t.Errorf("wrapped: CodeOf = %q", CodeOf(wrapped))
	}
	if got := e.Error(); got != "rate_limited: slow down (HTTP 429)" {
		t.Errorf("Error() = %q", got)
	}
}

func TestAPIErrorFromOtherBodies(t *testing.T) {
	e := apiError(502, http.Header{}, []byte("<html>\n  <body>Bad   Gateway</body></html>"))
	if e.Code != "" || e.Message != "Bad Gateway: <html> <body>Bad Gateway</body></html>" {
		t.Errorf("html error = %+v", e)
	}
	if errors.Is(e, &APIError{}) {
		t.Error("an error without code matched the empty sentinel")
	}
	long := apiError(404, http.Header{"Retry-After": {"Wed, 21 Oct 2015 07:28:00 GMT"}}, []byte(strings.Repeat("a", 500)))
	if len(long.Message) > 200 || long.RetryAfter != 0 {
		t.Errorf("long body message = %d bytes, retry %v", len(long.Message), long.RetryAfter)
	}
	if got := apiError(404, http.Header{}, nil).Error(); got != "HTTP 404: Not Found" {
		t.Errorf("empty body = %q", got)
	}
}

func TestIsUnknownUser(t *testing.T) {
	if !IsUnknownUser(&APIError{Status: 404, Code: "not_found"}) || !IsUnknownUser(&APIError{Status: 404, Code: "unknown_recipient"}) {
		t.Error("404 codes not recognised")
	}
	if IsUnknownUser(&APIError{Status: 404}) || IsUnknownUser(errors.New("x")) {
		t.Error("non-KEZ 404 taken for an unknown user")
	}
}

func TestTransportErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c, err := New(url, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Health(context.Background())
	var ne *NetworkError
	if !errors.As(err, &ne) || !strings.HasPrefix(err.Error(), "cannot reach "+url+": ") {
		t.Errorf("closed server: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Health(ctx); !errors.Is(err, context.Canceled) || errors.As(err, &ne) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestNotAKEZServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/healthz" {
			w.Write([]byte("<html>hello</html>"))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	c, _ := New(srv.URL+"/", Options{})
	var pe *ProtocolError
	if _, err := c.Health(context.Background()); !errors.As(err, &pe) {
		t.Errorf("html health: %v", err)
	}
	if _, err := c.Lookup(context.Background(), "bob"); CodeOf(err) != "" || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("plain 404: %v", err)
	}
}

func TestNewRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "localhost:8080", "ftp://x", "http://", "http://x/?a=1", "http://x/#f", "::"} {
		if _, err := New(u, Options{}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
	c, err := New("http://example.com:8080/chat/", Options{})
	if err != nil || c.BaseURL() != "http://example.com:8080/chat" {
		t.Errorf("New = %v, %v", c, err)
	}
}
