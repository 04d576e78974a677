package handlers

import (
	"context"
	"crypto/ecdh"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/pushtest"
	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/push"
	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/bolt"
)

const pushContact = "mailto:ops@kez.test"

// outcomes counts a Sender's outcomes.
type outcomes struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *outcomes) count(outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n[outcome]++
}

func (o *outcomes) get(outcome string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[outcome]
}

type pushEnv struct {
	*env
	sender   *push.Sender
	service  *pushtest.Service
	outcomes *outcomes
}

// newPushEnv is a server with push on, its sender's options from opts
// (Contact and Counted filled in), and a test push service.
func newPushEnv(t *testing.T, opts push.Options) *pushEnv {
	t.Helper()
	pe := &pushEnv{service: pushtest.New(t), outcomes: &outcomes{n: map[string]int{}}}
	opts.Contact = pushContact
	opts.Counted = pe.outcomes.count
	var cfg *Config
	pe.env = newEnvWith(t, func(c *Config) { cfg = c }, func(s *bolt.Store) storage.Store {
		pe.sender = push.New(s, opts)
		cfg.Push = pe.sender
		t.Cleanup(pe.sender.Close)
		return s
	})
	return pe
}

// subscribe registers sub for handle, signed by k, and checks the status.
func (e *env) subscribe(k *kez.Keys, handle, body string, status int, code string) {
	e.t.Helper()
	r := e.pushRequest(k, "PUT", handle, body)
	expect(e.t, "PUT push "+body, r, status, code)
}

func (e *env) pushRequest(k *kez.Keys, method, handle, body string, headers ...string) resp {
	e.t.Helper()
	auth := e.sign(k, method, "/v1/inbox/"+strings.ToLower(handle)+"/push", "", []byte(body))
	return e.do(method, "/v1/inbox/"+handle+"/push", strings.NewReader(body), append([]string{"X-KEZ-Auth", auth}, headers...)...)
}

// quiet waits until the sender has made every push due.
func (pe *pushEnv) quiet() {
	pe.t.Helper()
	testwait.For(pe.t, time.Minute, "the push sender to go quiet", pe.sender.Quiet)
}

func (pe *pushEnv) endpoints(handle string) []string {
	pe.t.Helper()
	list, err := pe.store.PushSubscriptions(context.Background(), handle)
	if err != nil {
		pe.t.Fatal(err)
	}
	var out []string
	for _, s := range list {
		out = append(out, s.Endpoint)
	}
	return out
}

func TestPushKey(t *testing.T) {
	pe := newPushEnv(t, push.Options{AllowPrivate: true})
	r := pe.do("GET", "/v1/push/key", nil)
	expect(t, "push key", r, 200, "")
	key, _ := r.json(t)["key"].(string)
	raw, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil || len(raw) != 65 {
		t.Fatalf("key %q: %d bytes, %v", key, len(raw), err)
	}
	if _, err := ecdh.P256().NewPublicKey(raw); err != nil {
		t.Fatalf("key is not a P-256 point: %v", err)
	}
	// It is the stored key's public half, the same on every ask.
	scalar, err := pe.store.PushKey(context.Background(), []byte("unused"))
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ecdh.P256().NewPrivateKey(scalar)
	if err != nil || base64.RawURLEncoding.EncodeToString(priv.PublicKey().Bytes()) != key {
		t.Fatalf("served key is not the stored key's: %v", err)
	}
	if again := pe.do("GET", "/v1/push/key", nil).json(t)["key"]; again != key {
		t.Fatalf("key changed: %v", again)
	}
	expect(t, "key with a query", pe.do("GET", "/v1/push/key?x=1", nil), 400, kez.CodeBadRequest)
	expect(t, "POST key", pe.do("POST", "/v1/push/key", strings.NewReader("{}")), 405, "method_not_allowed")
}

// With push off its paths are unknown.
func TestPushOff(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice")
	expect(t, "key", e.do("GET", "/v1/push/key", nil), 404, kez.CodeNotFound)
	expect(t, "subscribe", e.pushRequest(alice, "PUT", "alice", `{}`), 404, kez.CodeNotFound)
}

// Subscribing takes the owner's signature, once, over the exact body, and
// a subscription the server would push to.
func TestPushSubscribeRefusals(t *testing.T) {
	pe := newPushEnv(t, push.Options{})
	pe.users(alice, "alice", bob, "bob")
	dev := pe.service.Subscribe("phone", pushtest.Behavior{})
	key, auth := dev.P256dh, dev.Auth
	sub := func(endpoint string) string {
		return pushtest.JSON(storage.PushSubscription{Endpoint: endpoint, P256dh: key, Auth: auth})
	}
	good := sub("https://push.example.com/send/abc")
	long := "https://push.example.com/" + strings.Repeat("a", push.MaxEndpoint)

	// Signatures.
	expect(t, "unsigned", pe.do("PUT", "/v1/inbox/alice/push", strings.NewReader(good)), 401, kez.CodeUnauthorized)
	expect(t, "signed by bob", pe.pushRequest(bob, "PUT", "alice", good), 401, kez.CodeUnauthorized)
	signed := pe.sign(alice, "PUT", "/v1/inbox/alice/push", "", []byte(good))
	expect(t, "first use", pe.do("PUT", "/v1/inbox/alice/push", strings.NewReader(good), "X-KEZ-Auth", signed), 204, "")
	expect(t, "replayed", pe.do("PUT", "/v1/inbox/alice/push", strings.NewReader(good), "X-KEZ-Auth", signed), 401, kez.CodeUnauthorized)
	other := sub("https://push.example.com/send/other")
	expect(t, "signature over another body", pe.do("PUT", "/v1/inbox/alice/push", strings.NewReader(other),
		"X-KEZ-Auth", pe.sign(alice, "PUT", "/v1/inbox/alice/push", "", []byte(good))), 401, kez.CodeUnauthorized)
	expect(t, "unknown handle", pe.pushRequest(alice, "PUT", "nobody", good), 404, kez.CodeNotFound)
	expect(t, "not JSON", pe.pushRequest(alice, "PUT", "alice", good, "Content-Type", "text/plain"), 415, kez.CodeBadRequest)
	expect(t, "with a query", pe.do("PUT", "/v1/inbox/alice/push?x=1", strings.NewReader(good),
		"X-KEZ-Auth", pe.sign(alice, "PUT", "/v1/inbox/alice/push", "x=1", []byte(good))), 400, kez.CodeBadRequest)
	expect(t, "no body", pe.pushRequest(alice, "PUT", "alice", ""), 400, kez.CodeBadRequest)
	expect(t, "GET", pe.do("GET", "/v1/inbox/alice/push", nil), 405, "method_not_allowed")

	// Bodies.
	for name, body := range map[string]string{
		"huge":                 `{"endpoint":"https://push.example.com/` + strings.Repeat("a", 5000) + `","keys":{"p256dh":"` + key + `","auth":"` + auth + `"}}`,
		"case-twisted member":  strings.Replace(good, `"endpoint"`, `"Endpoint"`, 1),
		"case-twisted key":     strings.Replace(good, `"p256dh"`, `"P256dh"`, 1),
		"unknown member":       strings.Replace(good, `{`, `{"extra":1,`, 1),
		"duplicate member":     strings.Replace(good, `{`, `{"endpoint":"https://push.example.com/x",`, 1),
		"no keys":              `{"endpoint":"https://push.example.com/x"}`,
		"expirationTime text":  strings.Replace(good, `"expirationTime":null`, `"expirationTime":"soon"`, 1),
		"endpoint not string":  `{"endpoint":1,"keys":{"p256dh":"` + key + `","auth":"` + auth + `"}}`,
		"array":                `[` + good + `]`,
		"http":                 sub("http://push.example.com/x"),
		"loopback":             sub("https://127.0.0.1/x"),
		"loopback v6":          sub("https://[::1]/x"),
		"mapped loopback":      sub("https://[::ffff:127.0.0.1]/x"),
		"private":              sub("https://10.1.2.3/x"),
		"link-local":           sub("https://169.254.169.254/latest/meta-data"),
		"CGNAT":                sub("https://100.64.0.1/x"),
		"unspecified":          sub("https://0.0.0.0/x"),
		"localhost":            sub("https://localhost/x"),
		"LOCALHOST":            sub("https://LocalHost./x"),
		"single-label host":    sub("https://intranet/x"),
		"other port":           sub("https://push.example.com:8443/x"),
		"credentials":          sub("https://user:pw@push.example.com/x"),
		"fragment":             sub("https://push.example.com/x#y"),
		"relative":             sub("/x"),
		"too long":             sub(long),
		"p256dh not a point":   pushtest.JSON(storage.PushSubscription{Endpoint: "https://push.example.com/x", P256dh: base64.RawURLEncoding.EncodeToString(make([]byte, 65)), Auth: auth}),
		"p256dh not base64url": pushtest.JSON(storage.PushSubscription{Endpoint: "https://push.example.com/x", P256dh: key + "!", Auth: auth}),
		"auth of 15 bytes":     pushtest.JSON(storage.PushSubscription{Endpoint: "https://push.example.com/x", P256dh: key, Auth: base64.RawURLEncoding.EncodeToString(make([]byte, 15))}),
	} {
		r := pe.pushRequest(alice, "PUT", "alice", body)
		expect(t, name, r, 400, kez.CodeBadRequest)
	}
	if got := pe.endpoints("alice"); len(got) != 1 || got[0] != "https://push.example.com/send/abc" {
		t.Fatalf("stored after the refusals: %v", got)
	}
	expect(t, "delete, case-twisted", pe.pushRequest(alice, "DELETE", "alice", `{"Endpoint":"https://push.example.com/send/abc"}`), 400, kez.CodeBadRequest)
	expect(t, "delete by bob", pe.pushRequest(bob, "DELETE", "alice", `{"endpoint":"https://push.example.com/send/abc"}`), 401, kez.CodeUnauthorized)
	expect(t, "delete", pe.pushRequest(alice, "DELETE", "ALICE", `{"endpoint":"https://push.example.com/send/abc"}`), 204, "")
	expect(t, "delete again", pe.pushRequest(alice, "DELETE", "alice", `{"endpoint":"https://push.example.com/send/abc"}`), 204, "")
	if got := pe.endpoints("alice"); len(got) != 0 {
		t.Fatalf("after delete: %v", got)
	}
}

// A stored message from a contact makes exactly one content-free push per
// device, after the 201 (which never waits for it); a message request
// makes none.
func TestPushDelivery(t *testing.T) {
	pe := newPushEnv(t, push.Options{AllowPrivate: true, Interval: time.Hour})
	pe.users(alice, "alice", bob, "bob", carol, "carol")
	hold := make(chan struct{})
	phone := pe.service.Subscribe("phone", pushtest.Behavior{Hold: hold})
	laptop := pe.service.Subscribe("laptop", pushtest.Behavior{})
	pe.subscribe(alice, "alice", pushtest.JSON(phone), 204, "")
	pe.subscribe(alice, "alice", pushtest.JSON(laptop), 204, "")
	expect(t, "key", pe.do("GET", "/v1/push/key", nil), 200, "")
	servedKey := pe.do("GET", "/v1/push/key", nil).json(t)["key"]

	pe.msg(carol, alice, "alice", 201) // a stranger: a request
	pe.quiet()
	if got := pe.service.Pushes(); len(got) != 0 {
		t.Fatalf("a message request pushed: %+v", got)
	}
	expect(t, "accept bob", pe.owner(alice, "PUT", "/v1/inbox/alice/contacts/"+bob.Primary(), ""), 204, "")
	envelope := envl(bob, alice, `"ct":"secret-ciphertext"`)
	r := pe.send(bob, "alice", envelope)
	// The phone's push service holds its answer: the 201 came anyway.
	expect(t, "send", r, 201, "")
	rc := r.receipt(t)
	close(hold)
	pe.quiet()
	pushes := pe.service.Pushes()
	if len(pushes) != 2 {
		t.Fatalf("%d pushes, want one per device: %+v", len(pushes), pushes)
	}
	devices := map[string]bool{}
	for _, p := range pushes {
		if p.Err != nil {
			t.Fatalf("push to %s refused by the push service: %v", p.Device, p.Err)
		}
		devices[p.Device] = true
		seq, err := pushtest.Seq(p, "alice")
		if err != nil || seq != rc.Seq {
			t.Fatalf("push payload %s (seq %d, %v), want seq %d", p.Payload, seq, err, rc.Seq)
		}
		if strings.Contains(string(p.Payload), "secret") || strings.Contains(fmt.Sprint(p.Header), "secret") {
			t.Fatal("the push carries the envelope")
		}
		if p.Claims.Sub != pushContact || p.Claims.Aud != pe.service.URL || p.Key != servedKey {
			t.Fatalf("VAPID claims %+v, key %s (served %v)", p.Claims, p.Key, servedKey)
		}
		if p.Header.Get("TTL") != "86400" || p.Header.Get("Urgency") != "high" || len(p.Header.Get("Topic")) != 22 {
			t.Fatalf("push headers %v", p.Header)
		}
		if strings.Contains(p.Header.Get("Topic"), "alice") {
			t.Fatal("the Topic names the handle")
		}
	}
	if !devices["phone"] || !devices["laptop"] {
		t.Fatalf("pushed devices %v", devices)
	}
	// A resend of the same envelope (200, the original receipt) pushes nothing.
	expect(t, "resend", pe.send(bob, "alice", envelope), 200, "")
	pe.quiet()
	if n := len(pe.service.Pushes()); n != 2 {
		t.Fatalf("a resend pushed: %d pushes", n)
	}
	if pe.outcomes.get("sent") != 2 {
		t.Fatalf("outcomes %v", pe.outcomes.n)
	}
}

// Messages in a burst make one push per device at once and one more, an
// interval later, with the latest seq.
func TestPushCoalesced(t *testing.T) {
	const interval = 300 * time.Millisecond
	pe := newPushEnv(t, push.Options{AllowPrivate: true, Interval: interval})
	pe.users(alice, "alice", bob, "bob")
	expect(t, "accept bob", pe.owner(alice, "PUT", "/v1/inbox/alice/contacts/"+bob.Primary(), ""), 204, "")
	pe.subscribe(alice, "alice", pushtest.JSON(pe.service.Subscribe("phone", pushtest.Behavior{})), 204, "")
	var last uint64
	for range 6 {
		last = pe.msg(bob, alice, "alice", 201).Seq
	}
	pe.quiet()
	pushes := pe.service.Pushes()
	if len(pushes) < 1 || len(pushes) > 2 {
		t.Fatalf("%d pushes for a burst of 6, want at most 2", len(pushes))
	}
	if seq, err := pushtest.Seq(pushes[len(pushes)-1], "alice"); err != nil || seq != last {
		t.Fatalf("last push carries seq %d (%v), want the latest, %d", seq, err, last)
	}
	if len(pushes) == 2 && pushes[1].At.Sub(pushes[0].At) < interval {
		t.Fatalf("two pushes %s apart, interval %s", pushes[1].At.Sub(pushes[0].At), interval)
	}
}

// A push service's 404 or 410 removes the subscription; other devices stay.
func TestPushGoneRemovesSubscription(t *testing.T) {
	pe := newPushEnv(t, push.Options{AllowPrivate: true})
	pe.users(alice, "alice", bob, "bob")
	expect(t, "accept bob", pe.owner(alice, "PUT", "/v1/inbox/alice/contacts/"+bob.Primary(), ""), 204, "")
	gone := pe.service.Subscribe("gone", pushtest.Behavior{Status: 410})
	missing := pe.service.Subscribe("missing", pushtest.Behavior{Status: 404})
	failing := pe.service.Subscribe("failing", pushtest.Behavior{Status: 500})
	for _, s := range []storage.PushSubscription{gone, missing, failing} {
		pe.subscribe(alice, "alice", pushtest.JSON(s), 204, "")
	}
	pe.msg(bob, alice, "alice", 201)
	pe.quiet()
	if got := pe.endpoints("alice"); len(got) != 1 || got[0] != failing.Endpoint {
		t.Fatalf("subscriptions after 410, 404 and 500: %v", got)
	}
	if pe.outcomes.get("removed") != 2 || pe.outcomes.get("failed") != 1 {
		t.Fatalf("outcomes %v", pe.outcomes.n)
	}
}

// Hostile endpoints: one that never answers and one answering without
// end cost the server bounded time and memory, and never hold up other
// devices or sends.
func TestPushHostileEndpoints(t *testing.T) {
	pe := newPushEnv(t, push.Options{AllowPrivate: true, Timeout: 500 * time.Millisecond})
	pe.users(alice, "alice", bob, "bob")
	expect(t, "accept bob", pe.owner(alice, "PUT", "/v1/inbox/alice/contacts/"+bob.Primary(), ""), 204, "")
	never := make(chan struct{}) // never closed: a push service that never answers
	pe.subscribe(alice, "alice", pushtest.JSON(pe.service.Subscribe("slow", pushtest.Behavior{Hold: never})), 204, "")
	pe.subscribe(alice, "alice", pushtest.JSON(pe.service.Subscribe("huge", pushtest.Behavior{Body: 1 << 30})), 204, "")
	pe.subscribe(alice, "alice", pushtest.JSON(pe.service.Subscribe("fine", pushtest.Behavior{})), 204, "")
	pe.msg(bob, alice, "alice", 201)
	pe.quiet()
	if pe.outcomes.get("failed") != 1 || pe.outcomes.get("sent") != 2 {
		t.Fatalf("outcomes %v: want the slow push cut off, the others sent", pe.outcomes.n)
	}
	// Far less than the gigabyte offered was taken (only socket buffers
	// beyond the 4 KiB read).
	if n := pe.service.Written(); n > 64<<20 {
		t.Fatalf("the huge answer was read: %d bytes taken", n)
	}

}

// Many devices whose push service holds every answer: never more than
// push.Concurrency pushes in flight, sends go on, and once the answers
// come every device has had its push.
func TestPushConcurrencyBounded(t *testing.T) {
	pe := newPushEnv(t, push.Options{AllowPrivate: true})
	pe.users(bob, "bob")
	hold := make(chan struct{})
	const users = 3
	for i := range users {
		h := fmt.Sprintf("user%d", i)
		k := namedKeys(h)
		pe.users(k, h)
		expect(t, "accept bob", pe.owner(k, "PUT", "/v1/inbox/"+h+"/contacts/"+bob.Primary(), ""), 204, "")
		for j := range push.MaxSubscriptions {
			pe.subscribe(k, h, pushtest.JSON(pe.service.Subscribe(fmt.Sprintf("%s-%d", h, j), pushtest.Behavior{Hold: hold})), 204, "")
		}
		pe.msg(bob, k, h, 201)
	}
	if _, ok := pe.service.Wait(time.Minute, func(p []pushtest.Push) bool { return len(p) >= push.Concurrency }); !ok {
		t.Fatal("the pushes never reached the push service")
	}
	close(hold)
	pe.quiet()
	if n := pe.service.MaxInFlight(); n > push.Concurrency {
		t.Fatalf("%d pushes in flight at once, limit %d", n, push.Concurrency)
	}
	if n, sent := len(pe.service.Pushes()), pe.outcomes.get("sent"); n != users*push.MaxSubscriptions || sent != n {
		t.Fatalf("%d pushes, %d sent; want one per device, %d", n, sent, users*push.MaxSubscriptions)
	}
}

// A stored subscription the current rules refuse (a private address
// stored while private endpoints were allowed) is never contacted.
func TestPushRefusesStoredPrivateEndpoint(t *testing.T) {
	pe := newPushEnv(t, push.Options{})
	pe.users(alice, "alice", bob, "bob")
	expect(t, "accept bob", pe.owner(alice, "PUT", "/v1/inbox/alice/contacts/"+bob.Primary(), ""), 204, "")
	sub := pe.service.Subscribe("phone", pushtest.Behavior{})
	u, _ := url.Parse(sub.Endpoint)
	sub.Endpoint = "https://" + u.Host + u.Path // loopback, https
	if err := pe.store.PutPush(context.Background(), "alice", sub, 10); err != nil {
		t.Fatal(err)
	}
	pe.msg(bob, alice, "alice", 201)
	pe.quiet()
	if n := len(pe.service.Pushes()); n != 0 || pe.outcomes.get("failed") != 1 {
		t.Fatalf("a loopback endpoint was contacted: %d pushes, outcomes %v", n, pe.outcomes.n)
	}
}
