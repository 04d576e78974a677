package handlers

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// instantStore is a storage.Store whose lookups and appends cost nothing,
// so that BenchmarkSend measures the handler alone. It knows two users;
// the methods a send does not use are left to the nil embedded Store.
type instantStore struct {
	storage.Store
	users map[string]storage.Record // by handle
	seq   uint64
}

func newInstantStore(users map[string]*kez.Keys) *instantStore {
	s := &instantStore{users: map[string]storage.Record{}}
	for handle, k := range users {
		s.users[handle] = storage.Record{Handle: handle, Primary: k.Primary(), RegisteredAt: 1764115200}
	}
	return s
}

func (s *instantStore) Lookup(_ context.Context, handle string) (storage.Record, error) {
	if rec, ok := s.users[handle]; ok {
		return rec, nil
	}
	return storage.Record{}, storage.ErrNotFound
}

func (s *instantStore) LookupPrimary(_ context.Context, primary string) (storage.Record, error) {
	for _, rec := range s.users {
		if rec.Primary == primary {
			return rec, nil
		}
	}
	return storage.Record{}, storage.ErrNotFound
}

func (s *instantStore) Append(_ context.Context, d storage.Delivery, _ storage.Limits) (storage.Message, bool, error) {
	s.seq++
	return storage.Message{Seq: s.seq, ReceivedAt: 1764115200123, From: d.From, FromAddr: d.FromAddr, Envelope: d.Envelope}, true, nil
}

// BenchmarkSend is the CPU cost of POST /v1/messages in the handler, with
// real sealed envelopes of about 1 KiB and 256 KiB as clients send them:
// reading and hashing the body, the exact-member scan, and the Ed25519
// check of the sender's request signature. A send's signature is not
// single use (a resend gets its receipt), so one signed request serves
// every iteration; the clock is pinned to keep it fresh.
func BenchmarkSend(b *testing.B) {
	link, err := alice.LinkTo(bob.Primary())
	if err != nil {
		b.Fatal(err)
	}
	at := time.Unix(1764115200, 0)
	for _, size := range []int{1 << 10, 256 << 10} {
		env, err := link.Seal(bytes.Repeat([]byte("x"), (size-400)*3/4))
		if err != nil {
			b.Fatal(err)
		}
		body := append(append([]byte(`{"to":"bob","envelope":`), env.AppendJSON(nil)...), '}')
		auth := signAt(alice, serverName, "POST", "/v1/messages", "", body, at)
		store := newInstantStore(map[string]*kez.Keys{"alice": alice, "bob": bob})
		h := New(Config{Server: serverName, Now: func() time.Time { return at }}, store, hub.New(), nil)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, "/v1/messages", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-KEZ-Auth", auth)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusCreated {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}
