package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestEnvelopeBody(t *testing.T) {
	body, err := envelopeBody(`al"ice`, json.RawMessage(` {"v":1} `))
	if err != nil || string(body) != `{"to":"al\"ice","envelope": {"v":1} }` {
		t.Fatalf("body %s, %v", body, err)
	}
	for _, bad := range []string{``, `{"v":1`, `{"a":1,"a":2}`, "{\"a\":\"\xff\"}"} {
		if body, err := envelopeBody("alice", json.RawMessage(bad)); err == nil {
			t.Errorf("%q: body %s", bad, body)
		}
	}
}

const bobKey = "ed25519:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"

func TestParseMessage(t *testing.T) {
	data := []byte(`{"seq":12,"from":"` + bobKey + `","from_addr":"bob@kez.test","request":true,"envelope":{"v":1,"ct":"x"},"received_at":1764115200123}`)
	m, err := parseMessage(data)
	if err != nil {
		t.Fatal(err)
	}
	want := Message{Seq: 12, From: bobKey, FromAddr: "bob@kez.test", Request: true, Envelope: json.RawMessage(`{"v":1,"ct":"x"}`), ReceivedAt: 1764115200123}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Fatalf("parsed %+v", m)
	}
	copy(data, bytes.Repeat([]byte("#"), len(data)))
	if string(m.Envelope) != `{"v":1,"ct":"x"}` {
		t.Fatal("the envelope shares the reader's buffer")
	}
	if m, err := parseMessage([]byte(`{"seq":1,"from":"` + bobKey + `","request":false,"envelope":{},"received_at":1}`)); err != nil || m.FromAddr != "" {
		t.Errorf("without from_addr: %+v, %v", m, err)
	}
	// What a hostile or broken server might send: each is refused whole.
	const rest = `"from":"` + bobKey + `","request":false,"envelope":{},"received_at":1`
	for _, bad := range []string{``, `[]`, `{}`,
		`{"seq":-1,` + rest + `}`, `{"seq":1.5,` + rest + `}`, `{"seq":"1",` + rest + `}`, `{"seq":0,` + rest + `}`,
		`{"seq":1,"received_at":1e3,"from":"` + bobKey + `","request":false,"envelope":{}}`,
		`{"seq":1,"seq":2,` + rest + `}`,                                  // duplicate
		`{"Seq":1,` + rest + `}`,                                          // case variant
		`{"seq":1,"SEQ":1,` + rest + `}`,                                  // both spellings
		`{"seq":1,` + rest + `,"later":[1,{"a":2}]}`,                      // unknown member
		`{"seq":1,"from":"` + bobKey + `","envelope":{},"received_at":1}`, // no request
		`{"seq":1,"from":"` + bobKey + `","request":0,"envelope":{},"received_at":1}`,
		`{"seq":1,"from":1,"request":false,"envelope":{},"received_at":1}`,
		`{"seq":1,"from":"` + bobKey + `","request":false,"envelope":"{}","received_at":1}`,
		`{"seq":1,` + rest + `,"from_addr":null}`,
		`{"seq":1,` + rest + `,"From_addr":"x@y"}`,
		`{"seq":1,` + rest, `{"seq":1,` + rest + `} x`} {
		if m, err := parseMessage([]byte(bad)); err == nil {
			t.Errorf("%q parsed as %+v", bad, m)
		}
	}
}

func TestParseInboxPage(t *testing.T) {
	msg := func(seq int) string {
		return fmt.Sprintf(`{"seq":%d,"from":"%s","request":false,"envelope":{},"received_at":1}`, seq, bobKey)
	}
	page, err := parseInboxPage([]byte(`{"messages":[` + msg(3) + `,` + msg(5) + `],"next_since":5,"more":true}`))
	if err != nil || len(page.Messages) != 2 || page.Messages[1].Seq != 5 || page.NextSince != 5 || !page.More {
		t.Fatalf("page = %+v, %v", page, err)
	}
	for _, bad := range []string{
		`{"messages":[],"next_since":0}`,
		`{"messages":[],"next_since":0,"more":false,"extra":1}`,
		`{"messages":[],"Next_since":0,"more":false}`,
		`{"messages":[],"next_since":0,"next_since":1,"more":false}`,
		`{"messages":{},"next_since":0,"more":false}`,
		`{"messages":[` + msg(5) + `,` + msg(3) + `],"next_since":5,"more":false}`,
		`{"messages":[` + msg(5) + `,` + msg(5) + `],"next_since":5,"more":false}`,
		`{"messages":[{"seq":1}],"next_since":1,"more":false}`,
	} {
		if page, err := parseInboxPage([]byte(bad)); err == nil {
			t.Errorf("%s parsed as %+v", bad, page)
		}
	}
}

func TestParseReceiptAndContacts(t *testing.T) {
	if r, err := parseReceipt([]byte(`{"seq":12,"to":"alice","received_at":7}`)); err != nil || r.Seq != 12 || r.To != "alice" || r.ReceivedAt != 7 {
		t.Errorf("receipt = %+v, %v", r, err)
	}
	for _, bad := range []string{`{"seq":12,"to":"alice"}`, `{"seq":12,"To":"alice","received_at":7}`, `{"seq":12,"to":"alice","received_at":7,"x":1}`} {
		if r, err := parseReceipt([]byte(bad)); err == nil {
			t.Errorf("%s parsed as %+v", bad, r)
		}
	}
	if c, err := parseContacts([]byte(`{"accepted":["` + bobKey + `"],"blocked":[]}`)); err != nil || len(c.Accepted) != 1 || c.Blocked == nil {
		t.Errorf("contacts = %+v, %v", c, err)
	}
	for _, bad := range []string{`{"accepted":[]}`, `{"accepted":[],"blocked":null}`, `{"accepted":["bob"],"blocked":[]}`,
		`{"accepted":[],"Blocked":[]}`, `{"accepted":[],"blocked":[],"pending":[]}`} {
		if c, err := parseContacts([]byte(bad)); err == nil {
			t.Errorf("%s parsed as %+v", bad, c)
		}
	}
}

// BenchmarkParseMessage compares the stream's message parsing with the
// encoding/json it replaced.
func BenchmarkParseMessage(b *testing.B) {
	for _, size := range []int{1 << 10, 256 << 10} {
		data := []byte(`{"seq":12,"from":"` + bobKey + `","from_addr":"bob@kez.test","request":false,"envelope":{"v":1,"ct":"` + strings.Repeat("A", size) + `"},"received_at":1764115200123}`)
		b.Run(fmt.Sprintf("scan/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := parseMessage(data); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("encoding-json/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				var m struct {
					Seq        uint64          `json:"seq"`
					From       string          `json:"from"`
					FromAddr   string          `json:"from_addr"`
					Request    bool            `json:"request"`
					Envelope   json.RawMessage `json:"envelope"`
					ReceivedAt int64           `json:"received_at"`
				}
				if err := json.Unmarshal(data, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPostEnvelopeBody is the cost of building a send's body, with the
// json.Marshal that PostEnvelope used before for comparison.
func BenchmarkPostEnvelopeBody(b *testing.B) {
	for _, size := range []int{1 << 10, 256 << 10} {
		env := json.RawMessage(`{"v":1,"ct":"` + strings.Repeat("A", size) + `"}`)
		b.Run(fmt.Sprintf("by-hand/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(env)))
			for b.Loop() {
				if _, err := envelopeBody("alice", env); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("encoding-json/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(env)))
			for b.Loop() {
				if _, err := json.Marshal(struct {
					To       string          `json:"to"`
					Envelope json.RawMessage `json:"envelope"`
				}{"alice", env}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
