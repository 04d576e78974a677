package push

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

func TestPublic(t *testing.T) {
	for addr, want := range map[string]bool{
		"142.250.74.106": true, "2a00:1450:4001:82b::200a": true, "17.253.144.10": true,
		"127.0.0.1": false, "::1": false, "10.0.0.1": false, "172.16.5.4": false, "192.168.1.1": false,
		"169.254.169.254": false, "fe80::1": false, "fc00::1": false, "fd12::1": false, "0.0.0.0": false, "::": false,
		"100.64.0.1": false, "224.0.0.1": false, "ff02::1": false, "255.255.255.255": false, "240.0.0.1": false,
		"::ffff:127.0.0.1": false, "::ffff:10.0.0.1": false, "64:ff9b::a00:1": false, "2002:7f00:1::": false,
		"198.18.0.1": false, "192.0.2.1": false, "2001:db8::1": false,
	} {
		if got := Public(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Public(%s) = %v, want %v", addr, got, want)
		}
	}
}

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
		if !errors.Is(err, errNotPublic) {
			t.Errorf("%s: %v, want errNotPublic", u, err)
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
