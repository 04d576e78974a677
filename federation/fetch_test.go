package federation

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kezchat/kez/kez"
)

func TestValidServerName(t *testing.T) {
	for _, s := range []string{"kez.lat", "one.test", "a-b.example", "localhost", "1.2.3.4", "xn--bcher-kva.example"} {
		if !ValidServerName(s) {
			t.Errorf("%q is valid", s)
		}
	}
	for _, s := range []string{"", "Kez.lat", "kez.lat:443", "kez..lat", ".kez.lat", "kez.lat.", "-a.example", "a-.example",
		"a_b.example", "[::1]", "::1", "fe80::1%eth0", "kez.lat/x", "u@kez.lat", strings.Repeat("a", 64) + ".example",
		strings.Repeat("a.", 127) + "aa", "k\u212aez.lat"} {
		if ValidServerName(s) {
			t.Errorf("%q is not valid", s)
		}
	}
}

func TestPolicy(t *testing.T) {
	for _, c := range []struct {
		mode    string
		servers []string
		admits  map[string]bool
	}{
		{Open, nil, map[string]bool{"a.example": true}},
		{Off, nil, map[string]bool{"a.example": false}},
		{Allow, []string{"A.example"}, map[string]bool{"a.example": true, "b.example": false}},
		{Deny, []string{"a.example"}, map[string]bool{"a.example": false, "b.example": true}},
	} {
		p, err := ParsePolicy(c.mode, c.servers)
		if err != nil {
			t.Fatal(err)
		}
		for s, want := range c.admits {
			if p.Admits(s) != want {
				t.Errorf("%s %v admits %s: %v", c.mode, c.servers, s, !want)
			}
		}
	}
	if (Policy{}).Name() != Open || !(Policy{}).Admits("x.example") {
		t.Error("the zero Policy is not open")
	}
}

// admit refuses what the fetch rules forbid before any connection: names
// that resolve to private addresses (all, or only some), IP literals
// that are not public, names that do not resolve.
func TestAdmitWithoutConnecting(t *testing.T) {
	f := newFetcher(map[string]string{"lab.test": "http://127.0.0.1:1"}, false)
	f.lookup = func(_ context.Context, host string) ([]netip.Addr, error) {
		switch host {
		case "public.example":
			return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
		case "mixed.example": // a rebinding trick: one public, one private
			return []netip.Addr{netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("127.0.0.1")}, nil
		case "inside.example":
			return []netip.Addr{netip.MustParseAddr("10.1.2.3")}, nil
		}
		return nil, errors.New("no such host")
	}
	ctx := context.Background()
	for server, wantOK := range map[string]bool{
		"public.example": true, "lab.test": true, "8.8.8.8": true,
		"mixed.example": false, "inside.example": false, "nowhere.example": false, "127.0.0.1": false, "10.0.0.1": false,
		"Bad.Name": false,
	} {
		err := f.admit(ctx, server)
		if (err == nil) != wantOK {
			t.Errorf("admit(%s) = %v", server, err)
		}
		var ke *kez.Error
		if err != nil && (!errors.As(err, &ke) || ke.Code != kez.CodeFederationRefused) {
			t.Errorf("admit(%s): %v, want federation_refused", server, err)
		}
	}
}

// The public client refuses to connect to a loopback address even when
// asked to fetch from one directly (as after DNS rebinding).
func TestPublicClientRefusesLoopbackAtConnect(t *testing.T) {
	var hit atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit.Store(true) }))
	defer srv.Close()
	f := newFetcher(nil, false)
	_, err := f.get(context.Background(), srv.URL+"/v1/log/key", false)
	var ke *kez.Error
	if !errors.As(err, &ke) || ke.Code != kez.CodeSenderUnverifiable || !strings.Contains(err.Error(), "not a public address") {
		t.Fatalf("fetch from loopback: %v", err)
	}
	if hit.Load() {
		t.Fatal("the loopback server was reached")
	}
	// The trusted client (bases from federation_resolve) may.
	if ans, err := f.get(context.Background(), srv.URL+"/", true); err != nil || ans.status != 200 {
		t.Fatalf("trusted fetch: %+v, %v", ans, err)
	}
}

// At most MaxFetches run at once; one more is refused at once.
func TestFetchSlots(t *testing.T) {
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(MaxFetches)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= MaxFetches {
			started.Done()
			<-release
		}
	}))
	defer srv.Close()
	f := newFetcher(nil, true)
	var done sync.WaitGroup
	for range MaxFetches {
		done.Go(func() { _, _ = f.get(context.Background(), srv.URL, false) })
	}
	started.Wait()
	_, err := f.get(context.Background(), srv.URL, false)
	if err == nil || !strings.Contains(err.Error(), "running already") {
		t.Fatalf("fetch %d: %v", MaxFetches+1, err)
	}
	close(release)
	done.Wait()
	if ans, err := f.get(context.Background(), srv.URL, false); err != nil || ans.status != 200 {
		t.Fatalf("after the others ended: %+v, %v", ans, err)
	}
}

func TestCheckBase(t *testing.T) {
	strict, lax := newFetcher(nil, false), newFetcher(nil, true)
	for raw, want := range map[string]string{"https://kez.example/": "https://kez.example", "https://kez.example/api": "https://kez.example/api"} {
		if got, err := strict.checkBase(raw); err != nil || got != want {
			t.Errorf("checkBase(%s) = %s, %v", raw, got, err)
		}
	}
	for _, raw := range []string{"http://kez.example", "https://u:p@kez.example", "https://kez.example/?q", "https://kez.example/#f", "kez.example", "file:///etc/passwd", "javascript:alert(1)"} {
		if _, err := strict.checkBase(raw); err == nil {
			t.Errorf("checkBase(%s) passed", raw)
		}
	}
	if _, err := lax.checkBase("http://127.0.0.1:8080"); err != nil {
		t.Errorf("federation_allow_private: %v", err)
	}
}
