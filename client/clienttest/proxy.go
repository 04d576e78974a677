package clienttest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/kez"
)

// KeyProxy is a proxy in front of a Server (issue 12's attack): while
// Substitute is set, it answers the lookup of its handle with a key of its
// own, in a record that key signed (and the server's real log proof).
type KeyProxy struct {
	URL        string
	Substitute atomic.Bool
}

// SubstituteKey runs a KeyProxy in front of s for handle until the test
// ends; it passes every answer on unchanged until Substitute is set.
func SubstituteKey(t testing.TB, s *Server, handle string) *KeyProxy {
	t.Helper()
	mallory := kez.GenerateKeys()
	p := &KeyProxy{}
	target, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if !p.Substitute.Load() || resp.Request.URL.Path != "/v1/u/"+handle {
			return nil
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var rec map[string]json.RawMessage
		if err := json.Unmarshal(body, &rec); err != nil {
			return err
		}
		reg, _ := kez.SignRegistration(mallory.Private(), handle, s.Name, time.Now())
		rec["primary"], _ = json.Marshal(mallory.Primary())
		rec["registration"] = reg.Stored()
		body, _ = json.Marshal(rec)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Del("Content-Length")
		return nil
	}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	p.URL = front.URL
	return p
}
