package push

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/netguard"
)

// The check is made on the address actually dialed: a name or a literal
// that leads to loopback is refused before any byte is sent.
func TestClientRefusesNonPublicAddresses(t *testing.T) {
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits++ }))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	for _, u := range []string{srv.URL, "http://localhost:" + port} {
		req, _ := http.NewRequestWithContext(ctx, "POST", u, nil)
		_, err := newClient(false).Do(req)
		if !errors.Is(err, netguard.ErrNotPublic) {
			t.Errorf("%s: %v, want netguard.ErrNotPublic", u, err)
		}
	}
	if hits != 0 {
		t.Fatalf("the loopback server was reached %d times", hits)
	}
	// Allowed for tests only.
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL, nil)
	res, err := newClient(true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
}

// Redirects are not followed: the push service's answer is final.
func TestClientFollowsNoRedirect(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("redirect followed") }))
	defer target.Close()
	srv := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusTemporaryRedirect))
	defer srv.Close()
	res, err := newClient(true).Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("status %d", res.StatusCode)
	}
}

func TestVAPIDKeyAndTopic(t *testing.T) {
	scalar, err := NewVAPIDKey()
	if err != nil {
		t.Fatal(err)
	}
	k, err := parseVAPIDKey(scalar)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.public) != 87 { // 65 bytes, base64url
		t.Fatalf("public key %q", k.public)
	}
	if a, again := k.topic("alice"), k.topic("alice"); a == k.topic("bob") || a != again || len(a) != 22 {
		t.Fatal("topics are not per handle, stable and 22 characters (RFC 8030 §5.4 allows 32)")
	}
	if _, err := parseVAPIDKey([]byte("short")); err == nil {
		t.Fatal("a malformed stored key was accepted")
	}
}
