package handlers

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/kez"
)

// Who may send (SPEC §2.5): the key in envelope.from, registered here,
// signing the request, to the recipient's current primary.
func TestSendAuthenticatesTheSender(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	body := `{"to":"bob","envelope":` + envl(alice, bob) + `}`
	expect(t, "unsigned", e.do("POST", "/v1/messages", strings.NewReader(body)), 401, "unauthorized")
	expect(t, "signed by bob as alice", e.post(bob, body), 401, "unauthorized")
	expect(t, "signed by carol as alice", e.post(carol, body), 401, "unauthorized")
	expect(t, "carol, unknown here", e.send(carol, "bob", envl(carol, bob)), 403, "unknown_sender")
	expect(t, "an unknown key in from, signed by alice", e.post(alice, `{"to":"bob","envelope":`+envl(carol, bob)+`}`), 403, "unknown_sender")
	expect(t, "envelope.to another key", e.send(alice, "bob", envl(alice, carol)), 400, "bad_request")
	expect(t, "envelope.to the sender's key", e.send(alice, "bob", envl(alice, alice)), 400, "bad_request")
	expect(t, "from_addr of someone else", e.post(alice, `{"to":"bob","from_addr":"bob@kez.test","envelope":`+envl(alice, bob)+`}`), 400, "bad_request")
	// A from_addr of another server claims a remote sender (SPEC §8), which
	// this server does not verify yet.
	expect(t, "from_addr of another server", e.post(alice, `{"to":"bob","from_addr":"alice@other.example","envelope":`+envl(alice, bob)+`}`), 403, "federation_refused")
	expect(t, "from_addr in upper case", e.post(alice, `{"to":"bob","from_addr":"ALICE@kez.test","envelope":`+envl(alice, bob)+`}`), 400, "bad_request")
	expect(t, "from_addr not a string", e.post(alice, `{"to":"bob","from_addr":1,"envelope":`+envl(alice, bob)+`}`), 400, "bad_request")
	if got := e.all(bob, "bob"); len(got) != 0 {
		t.Fatalf("refused sends were stored: %+v", got)
	}
	expect(t, "alice with her own from_addr", e.post(alice, `{"to":"bob","from_addr":"alice@kez.test","envelope":`+envl(alice, bob)+`}`), 201, "")
	expect(t, "alice without from_addr", e.post(alice, body), 201, "")
	for _, m := range e.all(bob, "bob") {
		if m.From != alice.Primary() || m.FromAddr != "alice@kez.test" {
			t.Fatalf("stored %+v", m)
		}
	}
}

// A real sealed envelope goes through untouched and opens at the other end.
func TestSendSealedEnvelope(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	link, err := alice.LinkTo(bob.Primary())
	if err != nil {
		t.Fatal(err)
	}
	plain := kez.NewTextMessage("alice@kez.test", "hello bob", time.Now().UnixMilli())
	sealed, err := link.Seal(plain.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	raw := string(sealed.AppendJSON(nil))
	expect(t, "send", e.send(alice, "bob@kez.test", raw), 201, "")
	msgs := e.all(bob, "bob")
	if len(msgs) != 1 || string(msgs[0].Envelope) != raw {
		t.Fatalf("stored %+v, sent %s", msgs, raw)
	}
	_, got, err := bob.OpenJSON(msgs[0].Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := kez.ParsePlaintext(got); err != nil || p.Text != "hello bob" {
		t.Fatalf("opened %q: %v", got, err)
	}
}

// An envelope already stored (same sig) is not stored again: the answer is
// 200 with the original receipt, also after the recipient acknowledged it,
// and also for a replay of the very same signed request (SPEC §2.5).
func TestSendIsIdempotent(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	body := `{"to":"bob","envelope":` + envl(alice, bob) + `}`
	auth := e.sign(alice, "POST", "/v1/messages", "", []byte(body))
	first := e.do("POST", "/v1/messages", strings.NewReader(body), "X-KEZ-Auth", auth)
	expect(t, "first", first, 201, "")
	orig := first.receipt(t)
	check := func(what string, r resp) {
		t.Helper()
		expect(t, what, r, 200, "")
		if got := r.receipt(t); got != orig {
			t.Fatalf("%s: receipt %+v, want the original %+v", what, got, orig)
		}
	}
	check("resent, signed afresh", e.post(alice, body))
	check("the same signed request again", e.do("POST", "/v1/messages", strings.NewReader(body), "X-KEZ-Auth", auth))
	if msgs := e.all(bob, "bob"); len(msgs) != 1 || msgs[0].Seq != orig.Seq {
		t.Fatalf("bob holds %+v", msgs)
	}
	// Another message in between, then bob acknowledges everything.
	e.msg(alice, bob, "bob", 201)
	expect(t, "ack", e.owner(bob, "DELETE", "/v1/inbox/bob", fmt.Sprintf("upto=%d", orig.Seq+100)), 200, "")
	check("resent after the ack", e.post(alice, body))
	if msgs := e.all(bob, "bob"); len(msgs) != 0 {
		t.Fatalf("a resend after the ack was stored again: %+v", msgs)
	}
	// The same envelope in other whitespace is still the same envelope.
	pretty := strings.Replace(strings.Replace(body, `","`, `", "`, -1), `{"v"`, `{ "v"`, 1)
	check("resent pretty-printed", e.post(alice, pretty))
	// A new envelope is a new message.
	expect(t, "new", e.send(alice, "bob", envl(alice, bob)), 201, "")
}

// Case variants (SPEC §1): Go's decoder folds case, JavaScript does not;
// an envelope that two readers could read differently is refused, and so
// is a body member spelled in another case. Nothing is stored.
func TestSendRefusesCaseVariants(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	a, b := alice.Primary(), bob.Primary()
	bodies := map[string]string{
		"ct and CT":            `{"to":"bob","envelope":{"v":1,"from":"` + a + `","to":"` + b + `","ct":"x","CT":"y","sig":"1"}}`,
		"From instead of from": `{"to":"bob","envelope":{"v":1,"From":"` + a + `","to":"` + b + `","sig":"2"}}`,
		"from and From":        `{"to":"bob","envelope":{"v":1,"from":"` + a + `","From":"` + b + `","to":"` + b + `","sig":"3"}}`,
		"to and To":            `{"to":"bob","envelope":{"v":1,"from":"` + a + `","to":"` + b + `","To":"` + a + `","sig":"4"}}`,
		"sig and SIG":          `{"to":"bob","envelope":{"v":1,"from":"` + a + `","to":"` + b + `","sig":"5","SIG":"6"}}`,
		"Kelvin sign":          `{"to":"bob","envelope":{"v":1,"from":"` + a + `","to":"` + b + `","k":"x","\u212a":"y","sig":"7"}}`,
		"long s":               `{"to":"bob","envelope":{"v":1,"from":"` + a + `","to":"` + b + `","sig":"8","\u017fig":"9"}}`,
		"escaped From":         `{"to":"bob","envelope":{"v":1,"\u0046rom":"` + a + `","to":"` + b + `","sig":"10"}}`,
		"escaped duplicate":    `{"to":"bob","envelope":{"v":1,"from":"` + a + `","\u0066rom":"` + a + `","to":"` + b + `","sig":"11"}}`,
		"body To":              `{"To":"bob","envelope":` + envl(alice, bob) + `}`,
		"body TO":              `{"TO":"bob","envelope":` + envl(alice, bob) + `}`,
		"body to and To":       `{"to":"bob","To":"alice","envelope":` + envl(alice, bob) + `}`,
		"body Envelope":        `{"to":"bob","Envelope":` + envl(alice, bob) + `}`,
		"body From_addr":       `{"to":"bob","From_addr":"alice@kez.test","envelope":` + envl(alice, bob) + `}`,
	}
	for name, body := range bodies {
		expect(t, name, e.post(alice, body), 400, "bad_request")
	}
	if got := e.all(bob, "bob"); len(got) != 0 {
		t.Fatalf("stored: %+v", got)
	}
}

// Message requests (SPEC §2.5, §2.9): a stranger's messages are stored as
// requests, capped per sender and per inbox, gone when blocked, ordinary
// messages once accepted; contacts are never held up by strangers.
func TestMessageRequests(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RequestLimit = 3; c.MaxRequests = 5 })
	e.users(alice, "alice", bob, "bob", carol, "carol", dave, "dave", eve, "eve")

	// carol is a stranger to bob: a request, with who sent it.
	first := e.msg(carol, bob, "bob", 201)
	msgs := e.all(bob, "bob")
	if len(msgs) != 1 || !msgs[0].request() || msgs[0].From != carol.Primary() || msgs[0].FromAddr != "carol@kez.test" || msgs[0].Seq != first.Seq {
		t.Fatalf("carol's request: %+v", msgs)
	}
	e.msg(carol, bob, "bob", 201)
	e.msg(carol, bob, "bob", 201)
	r := e.send(carol, "bob", envl(carol, bob))
	expect(t, "carol's 4th request", r, 429, "request_limit")
	if ra := r.header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After = %q", ra)
	}
	// An acknowledged request frees its place.
	expect(t, "bob acks carol's first", e.owner(bob, "DELETE", "/v1/inbox/bob", fmt.Sprintf("upto=%d", first.Seq)), 200, "")
	e.msg(carol, bob, "bob", 201)
	expect(t, "carol is at her limit again", e.send(carol, "bob", envl(carol, bob)), 429, "request_limit")

	// max_requests counts all strangers: 3 from carol + 2 from dave, then
	// eve finds no room.
	e.msg(dave, bob, "bob", 201)
	e.msg(dave, bob, "bob", 201)
	r = e.send(eve, "bob", envl(eve, bob))
	expect(t, "eve, inbox full of requests", r, 429, "request_limit")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After on max_requests")
	}
	// Contacts still get through: alice because bob wrote to her first
	// (implicit acceptance), eve because bob accepts her explicitly.
	e.msg(bob, alice, "alice", 201)
	fromAlice := e.msg(alice, bob, "bob", 201)
	expect(t, "bob accepts eve", e.owner(bob, "PUT", "/v1/inbox/bob/contacts/"+eve.Primary(), ""), 204, "")
	fromEve := e.msg(eve, bob, "bob", 201)
	for _, m := range e.all(bob, "bob") {
		if (m.Seq == fromAlice.Seq || m.Seq == fromEve.Seq) == m.request() {
			t.Fatalf("message %+v: request=%v", m, m.request())
		}
	}

	// bob blocks carol: her requests are gone and she gets 403.
	expect(t, "bob blocks carol", e.owner(bob, "PUT", "/v1/inbox/bob/blocked/"+carol.Primary(), ""), 204, "")
	for _, m := range e.all(bob, "bob") {
		if m.From == carol.Primary() {
			t.Fatalf("carol's request %+v survived the block", m)
		}
	}
	expect(t, "carol blocked", e.send(carol, "bob", envl(carol, bob)), 403, "blocked")
	// The block freed carol's places among the requests: a new stranger
	// (eve, whose acceptance bob withdraws) fits again.
	expect(t, "bob withdraws eve", e.owner(bob, "DELETE", "/v1/inbox/bob/contacts/"+eve.Primary(), ""), 204, "")
	e.msg(eve, bob, "bob", 201)

	// bob accepts dave: his stored requests become ordinary messages.
	expect(t, "bob accepts dave", e.owner(bob, "PUT", "/v1/inbox/bob/contacts/"+dave.Primary(), ""), 204, "")
	n := 0
	for _, m := range e.all(bob, "bob") {
		if m.From == dave.Primary() {
			n++
			if m.request() {
				t.Fatalf("dave is accepted, but %+v is still a request", m)
			}
		}
	}
	if n != 2 {
		t.Fatalf("%d of dave's messages, want 2", n)
	}

	// The lists: alice (implicit), dave (explicit); carol blocked.
	r = e.owner(bob, "GET", "/v1/inbox/bob/contacts", "")
	expect(t, "contacts", r, 200, "")
	want := contactsJSON([]*kez.Keys{alice, dave}, []*kez.Keys{carol})
	if string(r.body) != want {
		t.Fatalf("contacts = %s\nwant       %s", r.body, want)
	}
	// Unblocking makes carol a stranger again: she may send a request.
	expect(t, "bob unblocks carol", e.owner(bob, "DELETE", "/v1/inbox/bob/blocked/"+carol.Primary(), ""), 204, "")
	if m := e.send(carol, "bob", envl(carol, bob)); m.status != 201 {
		t.Fatalf("carol after the unblock: %d %s", m.status, m.body)
	}
	for _, m := range e.all(bob, "bob") {
		if m.From == carol.Primary() && !m.request() {
			t.Fatalf("carol is a stranger again, but %+v is no request", m)
		}
	}
	// Withdrawing an acceptance makes dave's next message a request.
	expect(t, "bob withdraws dave", e.owner(bob, "DELETE", "/v1/inbox/bob/contacts/"+dave.Primary(), ""), 204, "")
	expect(t, "bob acks everything", e.owner(bob, "DELETE", "/v1/inbox/bob", "upto=1000000"), 200, "")
	again := e.msg(dave, bob, "bob", 201)
	if msgs := e.all(bob, "bob"); len(msgs) != 1 || msgs[0].Seq != again.Seq || !msgs[0].request() {
		t.Fatalf("dave's message after the withdrawal: %+v", msgs)
	}
	r = e.owner(bob, "GET", "/v1/inbox/bob/contacts", "")
	if want := contactsJSON([]*kez.Keys{alice}, nil); string(r.body) != want {
		t.Fatalf("contacts = %s\nwant       %s", r.body, want)
	}
}

// A copy sealed to one's own key (SPEC §3) is never a request, however
// many: sending accepts the recipient, here oneself.
func TestCopiesToSelfAreNoRequests(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RequestLimit = 1; c.MaxRequests = 1 })
	e.users(alice, "alice")
	for range 3 {
		e.msg(alice, alice, "alice", 201)
	}
	msgs := e.all(alice, "alice")
	if len(msgs) != 3 {
		t.Fatalf("%d copies stored, want 3", len(msgs))
	}
	for _, m := range msgs {
		if m.request() || m.From != alice.Primary() {
			t.Fatalf("copy %+v", m)
		}
	}
}

// contactsJSON is the expected GET …/contacts answer: sorted lists.
func contactsJSON(accepted, blocked []*kez.Keys) string {
	list := func(ks []*kez.Keys) string {
		var ps []string
		for _, k := range ks {
			ps = append(ps, `"`+k.Primary()+`"`)
		}
		slices.Sort(ps)
		return "[" + strings.Join(ps, ",") + "]"
	}
	return `{"accepted":` + list(accepted) + `,"blocked":` + list(blocked) + `}`
}

// A contact's messages are never refused for strangers: with max_requests
// reached by strangers, bob's contact still gets 201.
func TestContactsGetThroughAFullRequestBox(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RequestLimit = 2; c.MaxRequests = 2; c.MaxInbox = 3 })
	e.users(alice, "alice", bob, "bob", carol, "carol")
	expect(t, "bob accepts alice", e.owner(bob, "PUT", "/v1/inbox/bob/contacts/"+alice.Primary(), ""), 204, "")
	e.msg(carol, bob, "bob", 201)
	e.msg(carol, bob, "bob", 201)
	expect(t, "carol over max_requests", e.send(carol, "bob", envl(carol, bob)), 429, "request_limit")
	for range 3 {
		e.msg(alice, bob, "bob", 201)
	}
	// max_inbox counts contacts' messages only, and is its own error.
	expect(t, "alice over max_inbox", e.send(alice, "bob", envl(alice, bob)), 507, "inbox_full")
	expect(t, "carol still over max_requests", e.send(carol, "bob", envl(carol, bob)), 429, "request_limit")
}

// The contact endpoints (SPEC §2.9): owner-signed, a primary in the path.
func TestContactsEndpoints(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	for _, bad := range []string{"alice", "ed25519:xyz", strings.ToUpper(carol.Primary()), "ed25519:" + strings.Repeat("0", 63),
		"ED25519:" + carol.Primary()[8:], carol.Primary() + "0", "x25519:" + carol.Primary()[8:], "%20" + carol.Primary()} {
		for _, list := range []string{"contacts", "blocked"} {
			p := "/v1/inbox/bob/" + list + "/" + bad
			expect(t, "PUT "+p, e.do("PUT", p, nil, "X-KEZ-Auth", e.sign(bob, "PUT", p, "", nil)), 400, "bad_request")
			expect(t, "DELETE "+p, e.do("DELETE", p, nil, "X-KEZ-Auth", e.sign(bob, "DELETE", p, "", nil)), 400, "bad_request")
		}
	}
	p := "/v1/inbox/bob/contacts/" + carol.Primary()
	expect(t, "unsigned", e.do("PUT", p, nil), 401, "unauthorized")
	expect(t, "alice on bob's contacts", e.do("PUT", p, nil, "X-KEZ-Auth", e.sign(alice, "PUT", p, "", nil)), 401, "unauthorized")
	expect(t, "alice blocks for bob", e.do("PUT", "/v1/inbox/bob/blocked/"+carol.Primary(), nil, "X-KEZ-Auth", e.sign(alice, "PUT", "/v1/inbox/bob/blocked/"+carol.Primary(), "", nil)), 401, "unauthorized")
	expect(t, "alice reads bob's contacts", e.do("GET", "/v1/inbox/bob/contacts", nil, "X-KEZ-Auth", e.sign(alice, "GET", "/v1/inbox/bob/contacts", "", nil)), 401, "unauthorized")
	expect(t, "unsigned list", e.do("GET", "/v1/inbox/bob/contacts", nil), 401, "unauthorized")
	expect(t, "unknown handle", e.owner(bob, "PUT", "/v1/inbox/nobody/contacts/"+carol.Primary(), ""), 404, "not_found")
	expect(t, "unknown handle's list", e.owner(bob, "GET", "/v1/inbox/nobody/contacts", ""), 404, "not_found")
	expect(t, "invalid handle", e.owner(bob, "PUT", "/v1/inbox/b/contacts/"+carol.Primary(), ""), 400, "invalid_handle")
	r := e.owner(bob, "GET", "/v1/inbox/bob/contacts", "")
	if string(r.body) != `{"accepted":[],"blocked":[]}` {
		t.Fatalf("contacts after refusals: %s", r.body)
	}

	// Accepting needs no registered key (a remote sender, or one to come),
	// is idempotent, and the handle in the path may be in upper case.
	expect(t, "accept carol", e.owner(bob, "PUT", "/v1/inbox/BOB/contacts/"+carol.Primary(), ""), 204, "")
	expect(t, "accept carol again", e.owner(bob, "PUT", p, ""), 204, "")
	expect(t, "accept alice", e.owner(bob, "PUT", "/v1/inbox/bob/contacts/"+alice.Primary(), ""), 204, "")
	r = e.owner(bob, "GET", "/v1/inbox/bob/contacts", "")
	if want := contactsJSON([]*kez.Keys{alice, carol}, nil); string(r.body) != want {
		t.Fatalf("contacts = %s\nwant       %s", r.body, want)
	}
	// Blocking an accepted sender withdraws the acceptance.
	expect(t, "block carol", e.owner(bob, "PUT", "/v1/inbox/bob/blocked/"+carol.Primary(), ""), 204, "")
	r = e.owner(bob, "GET", "/v1/inbox/bob/contacts", "")
	if want := contactsJSON([]*kez.Keys{alice}, []*kez.Keys{carol}); string(r.body) != want {
		t.Fatalf("contacts = %s\nwant       %s", r.body, want)
	}
	expect(t, "withdraw alice", e.owner(bob, "DELETE", "/v1/inbox/bob/contacts/"+alice.Primary(), ""), 204, "")
	expect(t, "withdraw alice again", e.owner(bob, "DELETE", "/v1/inbox/bob/contacts/"+alice.Primary(), ""), 204, "")
	expect(t, "unblock carol", e.owner(bob, "DELETE", "/v1/inbox/bob/blocked/"+carol.Primary(), ""), 204, "")
	r = e.owner(bob, "GET", "/v1/inbox/bob/contacts", "")
	if string(r.body) != `{"accepted":[],"blocked":[]}` {
		t.Fatalf("contacts after withdrawing all: %s", r.body)
	}
	// alice's own lists are hers: bob's changes did not touch them.
	if r := e.owner(alice, "GET", "/v1/inbox/alice/contacts", ""); string(r.body) != `{"accepted":[],"blocked":[]}` {
		t.Fatalf("alice's contacts: %s", r.body)
	}
}

// sender_rate limits a sender's key wherever it sends from (SPEC §2.5).
func TestSenderRateLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.SenderRate = Rate{N: 2, Per: time.Hour}
		c.ClientIP = func(r *http.Request) string { return r.Header.Get("X-Test-Client") }
	})
	e.users(alice, "alice", bob, "bob", carol, "carol")
	sendFrom := func(ip string) resp {
		body := `{"to":"bob","envelope":` + envl(alice, bob) + `}`
		return e.post(alice, body, "X-Test-Client", ip)
	}
	expect(t, "1st from 10.0.0.1", sendFrom("10.0.0.1"), 201, "")
	expect(t, "2nd from 10.0.0.2", sendFrom("10.0.0.2"), 201, "")
	r := sendFrom("10.0.0.3")
	expect(t, "3rd from 10.0.0.3", r, 429, "rate_limited")
	if ra := r.header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After = %q", ra)
	}
	expect(t, "4th from 2001:db8::1", sendFrom("2001:db8::1"), 429, "rate_limited")
	// Other senders, from the same address, are not affected.
	expect(t, "carol from 10.0.0.3", e.post(carol, `{"to":"bob","envelope":`+envl(carol, bob)+`}`, "X-Test-Client", "10.0.0.3"), 201, "")
	// A forged send in alice's name does not spend her budget: it fails
	// the signature check before the limit is counted.
	bobs := newEnv(t, func(c *Config) { c.SenderRate = Rate{N: 1, Per: time.Hour} })
	bobs.users(alice, "alice", bob, "bob")
	body := `{"to":"bob","envelope":` + envl(alice, bob) + `}`
	for range 3 {
		expect(t, "forged", bobs.post(carol, body), 401, "unauthorized")
	}
	expect(t, "alice's own", bobs.post(alice, body), 201, "")
}
