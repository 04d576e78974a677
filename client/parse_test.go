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

func TestParseMessage(t *testing.T) {
	data := []byte(`{"seq":12,"envelope":{"v":1,"ct":"x"},"received_at":1764115200123,"later":[1,{"a":2}]}`)
	m, err := parseMessage(data)
	if err != nil {
		t.Fatal(err)
	}
	if m.Seq != 12 || m.ReceivedAt != 1764115200123 || string(m.Envelope) != `{"v":1,"ct":"x"}` {
		t.Fatalf("parsed %+v", m)
	}
	copy(data, bytes.Repeat([]byte("#"), len(data)))
	if string(m.Envelope) != `{"v":1,"ct":"x"}` {
		t.Fatal("the envelope shares the reader's buffer")
	}
	// What encoding/json made of it before.
	var want Message
	if err := json.Unmarshal([]byte(`{"seq":12,"envelope":{"v":1,"ct":"x"},"received_at":1764115200123}`), &want); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(want) != fmt.Sprint(m) {
		t.Fatalf("parsed %+v, encoding/json %+v", m, want)
	}
	for _, bad := range []string{``, `[]`, `{"seq":-1,"envelope":{}}`, `{"seq":1.5,"envelope":{}}`, `{"seq":"1","envelope":{}}`,
		`{"seq":1,"received_at":1e3,"envelope":{}}`, `{"seq":1,"seq":2,"envelope":{}}`, `{"seq":1,"envelope":{}`, `{"seq":1} x`} {
		if m, err := parseMessage([]byte(bad)); err == nil {
			t.Errorf("%q parsed as %+v", bad, m)
		}
	}
}

// BenchmarkParseMessage compares the stream's message parsing with the
// encoding/json it replaced.
func BenchmarkParseMessage(b *testing.B) {
	for _, size := range []int{1 << 10, 256 << 10} {
		data := []byte(`{"seq":12,"envelope":{"v":1,"ct":"` + strings.Repeat("A", size) + `"},"received_at":1764115200123}`)
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
				var m Message
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
