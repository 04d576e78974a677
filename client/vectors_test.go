package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/kez"
)

// TestAuthVectorsThroughTheClient: the requests the client builds, with the
// clock at the vectors' time, are the v2 vectors byte for byte: method,
// path, canonical query (no credential in the URL), body, and the
// X-KEZ-Auth header (SPEC §2.0).
func TestAuthVectorsThroughTheClient(t *testing.T) {
	v := clienttest.LoadVectorsV2(t)
	now := time.Unix(1764115200, 0)
	for name, a := range v.Auth {
		t.Run(name, func(t *testing.T) {
			type seen struct{ method, path, rawQuery, auth, body, contentType string }
			got := make(chan seen, 8)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got <- seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("X-KEZ-Auth"), string(b), r.Header.Get("Content-Type")}
				switch {
				case strings.HasSuffix(r.URL.Path, "/stream"):
					w.Header().Set("Content-Type", "text/event-stream")
					w.WriteHeader(http.StatusOK)
					_ = http.NewResponseController(w).Flush()
					<-r.Context().Done()
				case r.Method == http.MethodDelete:
					fmt.Fprint(w, `{"deleted":0}`)
				case r.Method == http.MethodPut:
					w.WriteHeader(http.StatusNoContent)
				case r.Method == http.MethodPost:
					w.WriteHeader(http.StatusCreated)
					fmt.Fprint(w, `{"seq":1,"to":"bob","received_at":1}`)
				case strings.HasSuffix(r.URL.Path, "/contacts"):
					fmt.Fprint(w, `{"accepted":[],"blocked":[]}`)
				default:
					fmt.Fprint(w, `{"messages":[],"next_since":0,"more":false}`)
				}
			}))
			defer srv.Close()
			c, err := client.New(srv.URL, client.Options{Keys: keysFromSeed(t, v.Keys[a.Signer].Seed), Handle: a.Signer,
				ServerName: v.Server, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			switch name {
			case "ack":
				_, err = c.Ack(ctx, 9)
			case "contacts_get":
				_, err = c.Contacts(ctx)
			case "contacts_put":
				err = c.Accept(ctx, v.Keys["alice"].Primary)
			case "inbox":
				_, err = c.Inbox(ctx, 5, 50)
			case "inbox_no_query":
				_, err = c.Inbox(ctx, 0, 0)
			case "send":
				env, ok := strings.CutPrefix(a.Body, `{"to":"bob","envelope":`)
				if !ok {
					t.Fatalf("unexpected send body %s", a.Body)
				}
				_, err = c.PostEnvelope(ctx, "bob", json.RawMessage(strings.TrimSuffix(env, "}")))
			case "stream":
				err = c.Stream(ctx, client.StreamOptions{Since: 7, OnConnect: cancel}, func(client.Message) error { return nil })
				if errors.Is(err, context.Canceled) {
					err = nil
				}
			default:
				t.Fatalf("no client call for the vector %q: add one", name)
			}
			if err != nil {
				t.Fatal(err)
			}
			s := <-got
			if s.method != a.Method || s.path != a.Path || s.body != a.Body {
				t.Errorf("request %s %s body %q; want %s %s body %q", s.method, s.path, s.body, a.Method, a.Path, a.Body)
			}
			if s.auth != a.Header {
				t.Errorf("X-KEZ-Auth %s\nwant        %s", s.auth, a.Header)
			}
			if _, q, auth, err := kez.ParseQuery(s.rawQuery, true, "since", "limit", "upto"); err != nil || q != a.Query || auth != "" {
				t.Errorf("query %q (canonical %q, auth %q, %v); want %q and no credential", s.rawQuery, q, auth, err, a.Query)
			}
			if u, _ := url.Parse(a.URL); s.rawQuery != u.RawQuery && s.rawQuery != a.Query {
				t.Errorf("query %q is neither the vector's URL's nor the canonical one", s.rawQuery)
			}
			if a.Body != "" {
				if mt, _, _ := mime.ParseMediaType(s.contentType); mt != "application/json" {
					t.Errorf("Content-Type %q", s.contentType)
				}
			}
		})
	}
}
