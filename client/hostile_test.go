package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gowebpki/jcs"
	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/kez"
)

// fixed serves one answer for every request.
func fixed(t *testing.T, status int, header http.Header, body string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestHostileInboxAnswers: an answer that one reader could take two ways
// is refused whole; a message whose authenticated sender is not the
// envelope's signer does not open.
func TestHostileInboxAnswers(t *testing.T) {
	v := clienttest.LoadVectors(t)
	bobKeys := keysFromSeed(t, v.Bob.Seed)
	env := string(v.Envelope.Envelope)
	msg := func(from string) string {
		return `{"seq":1,"from":"` + from + `","from_addr":"alice@kez.example","request":false,"envelope":` + env + `,"received_at":1}`
	}
	page := func(msgs string) string { return `{"messages":[` + msgs + `],"next_since":1,"more":false}` }
	inbox := func(body string) (*client.InboxPage, error) {
		c, _ := client.New(fixed(t, 200, nil, body), client.Options{Keys: bobKeys, Handle: "bob", ServerName: "kez.example"})
		return c.Inbox(context.Background(), 0, 0)
	}

	p, err := inbox(page(msg(v.Alice.Primary)))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := client.New("http://127.0.0.1:1", client.Options{Keys: bobKeys, Handle: "bob"})
	got, err := c.Open(p.Messages[0])
	if err != nil || got.Plaintext.Text != "hello bob" || got.From != v.Alice.Primary || got.FromAddr != "alice@kez.example" || got.Request {
		t.Fatalf("the honest message: %+v, %v", got, err)
	}

	// The server vouches for bob as the sender of alice's words.
	p, err = inbox(page(msg(v.Bob.Primary)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Open(p.Messages[0]); !errors.Is(err, kez.ErrUndecryptable) {
		t.Errorf("from ≠ envelope.from opened: %+v, %v", got, err)
	}

	honest := msg(v.Alice.Primary)
	for name, body := range map[string]string{
		"case-variant member":       page(strings.Replace(honest, `"from"`, `"From"`, 1)),
		"two spellings":             page(strings.Replace(honest, `"seq":1`, `"seq":1,"Seq":2`, 1)),
		"duplicate member":          page(strings.Replace(honest, `"seq":1`, `"seq":1,"seq":2`, 1)),
		"duplicate sender":          page(strings.Replace(honest, `"from":`, `"from":"`+v.Bob.Primary+`","from":`, 1)),
		"unknown member":            page(strings.Replace(honest, `"seq":1`, `"seq":1,"note":"hi"`, 1)),
		"request missing":           page(strings.Replace(honest, `"request":false,`, ``, 1)),
		"page member case":          strings.Replace(page(honest), `"more"`, `"More"`, 1),
		"page member twice":         strings.Replace(page(honest), `"more":false`, `"more":false,"more":true`, 1),
		"page member unknown":       strings.Replace(page(honest), `"more":false`, `"more":false,"total":1`, 1),
		"not JSON at all":           `<html>`,
		"envelope not an object":    page(strings.Replace(honest, env, `"`+strings.ReplaceAll(env, `"`, `\"`)+`"`, 1)),
		"request not a JSON bool":   page(strings.Replace(honest, `"request":false`, `"request":"false"`, 1)),
		"seq not a canonical count": page(strings.Replace(honest, `"seq":1`, `"seq":1.0`, 1)),
	} {
		var pe *client.ProtocolError
		if p, err := inbox(body); !errors.As(err, &pe) {
			t.Errorf("%s: Inbox = %+v, %v; want a ProtocolError", name, p, err)
		}
	}

	// A case variant inside the envelope passes the server (it reads only
	// from and to) and must not open.
	variant := strings.Replace(honest, `"nonce"`, `"Nonce"`, 1)
	if p, err := inbox(page(variant)); err != nil {
		t.Fatal(err)
	} else if got, err := c.Open(p.Messages[0]); !errors.Is(err, kez.ErrUndecryptable) {
		t.Errorf("case-variant envelope opened: %+v, %v", got, err)
	}
}

// TestHostileRecords: records are read exactly; log and rotation members
// are taken (SPEC §2.10, §5), and a rotation must be signed by both keys.
func TestHostileRecords(t *testing.T) {
	v := clienttest.LoadVectorsV2(t)
	alice := keysFromSeed(t, v.Keys["alice"].Seed)
	reg, err := kez.SignRegistration(alice.Private(), "alice", v.Server, time.Unix(1764115200, 0))
	if err != nil {
		t.Fatal(err)
	}
	record := func(primary, extra string) string {
		return `{"handle":"alice","server":"` + v.Server + `","address":"alice@` + v.Server + `","primary":"` + primary +
			`","registered_at":1764115200,"registration":` + string(reg.Stored()) + extra + `}`
	}
	// A server with a real log holding alice's registration and rotation,
	// whose lookups of alice answer body.
	f := clienttest.NewFake(t, v.Server)
	f.Append(reg.Stored())
	rotationLeaf, err := jcs.Transform(v.Rotation.Body)
	if err != nil {
		t.Fatal(err)
	}
	f.Append(rotationLeaf)
	var body string
	f.Intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v1/u/alice" {
			return false
		}
		fmt.Fprint(w, body)
		return true
	}
	lookup := func(b string) (*client.Record, error) {
		body = b
		c, _ := client.New(f.URL, client.Options{})
		return c.Lookup(context.Background(), "alice")
	}
	good := record(alice.Primary(), `,"log":`+f.Proof(0))
	if rec, err := lookup(good); err != nil || rec.Primary != alice.Primary() || rec.LogIndex != 0 {
		t.Fatalf("honest record: %+v, %v", rec, err)
	}
	var le *client.LogError
	if rec, err := lookup(record(alice.Primary(), "")); !errors.As(err, &le) || !strings.Contains(err.Error(), "without a log proof") {
		t.Fatalf("record without a proof: %+v, %v", rec, err)
	}
	if rec, err := lookup(record(alice.Primary(), `,"log":`+f.Proof(1))); !errors.As(err, &le) {
		t.Fatalf("record with the proof of another leaf: %+v, %v", rec, err)
	}
	rotated := record(v.Rotation.New, `,"log":`+f.Proof(1)+`,"rotation":`+string(v.Rotation.Body))
	if rec, err := lookup(rotated); err != nil || rec.Primary != v.Rotation.New || len(rec.Rotation) == 0 || rec.LogIndex != 1 {
		t.Fatalf("rotated record: %+v, %v", rec, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, v.Rotation.Body); err != nil {
		t.Fatal(err)
	}
	tampered := strings.Replace(compact.String(), `"ts":1764118800`, `"ts":1764118801`, 1)
	if tampered == compact.String() {
		t.Fatal("the rotation vector changed; tamper with it anew")
	}
	for name, bad := range map[string]string{
		"case-variant member":                   strings.Replace(good, `"primary"`, `"Primary"`, 1),
		"duplicate member":                      strings.Replace(good, `"primary":`, `"primary":"`+v.Keys["bob"].Primary+`","primary":`, 1),
		"unknown member":                        record(alice.Primary(), `,"note":"trust me"`),
		"another key, no rotation":              record(v.Keys["bob"].Primary, ""),
		"another key, rotation to someone else": record(v.Keys["bob"].Primary, `,"rotation":`+string(v.Rotation.Body)),
		"rotation with a bad signature":         record(v.Rotation.New, `,"rotation":`+tampered),
		"rotation, case variant":                record(v.Rotation.New, `,"Rotation":`+string(v.Rotation.Body)),
	} {
		var pe *client.ProtocolError
		if rec, err := lookup(bad); !errors.As(err, &pe) {
			t.Errorf("%s: Lookup = %+v, %v; want a ProtocolError", name, rec, err)
		}
	}
}

// TestSendErrors: the v2 refusals of a send come back as typed errors.
func TestSendErrors(t *testing.T) {
	keys := kez.GenerateKeys()
	send := func(status int, header http.Header, body string) (*client.Receipt, error) {
		c, _ := client.New(fixed(t, status, header, body), client.Options{Keys: keys, Handle: "alice", ServerName: "kez.test"})
		return c.PostEnvelope(context.Background(), "bob", json.RawMessage(`{"from":"x","to":"y"}`))
	}
	if r, err := send(201, nil, `{"seq":3,"to":"bob","received_at":5}`); err != nil || r.Seq != 3 || r.AlreadyStored {
		t.Errorf("201: %+v, %v", r, err)
	}
	if r, err := send(200, nil, `{"seq":3,"to":"bob","received_at":5}`); err != nil || r.Seq != 3 || !r.AlreadyStored {
		t.Errorf("200: %+v, %v", r, err)
	}
	errBody := func(code string) string { return `{"error":{"code":"` + code + `","message":"no"}}` }
	for _, c := range []struct {
		status int
		body   string
		want   error
	}{
		{403, errBody("unknown_sender"), client.ErrUnknownSender},
		{403, errBody("blocked"), client.ErrBlocked},
		{429, errBody("request_limit"), client.ErrRequestLimit},
		{408, errBody("body_timeout"), client.ErrBodyTimeout},
		{415, errBody("bad_request"), client.ErrUnsupportedMediaType},
		{415, errBody("bad_request"), client.ErrBadRequest},
	} {
		_, err := send(c.status, http.Header{"Retry-After": {"42"}}, c.body)
		var apiErr *client.APIError
		if !errors.Is(err, c.want) || !errors.As(err, &apiErr) || apiErr.RetryAfter != 42*time.Second {
			t.Errorf("HTTP %d %s: %v", c.status, c.body, err)
		}
	}
	if _, err := send(403, nil, errBody("blocked")); errors.Is(err, client.ErrUnsupportedMediaType) || errors.Is(err, client.ErrRequestLimit) {
		t.Errorf("blocked matches other sentinels: %v", err)
	}
	var pe *client.ProtocolError
	if _, err := send(201, nil, `{"seq":3,"to":"bob","received_at":5,"Seq":4}`); !errors.As(err, &pe) {
		t.Errorf("receipt with a case variant: %v", err)
	}
}
