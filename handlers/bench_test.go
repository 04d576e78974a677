package handlers

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// instantStore is a storage.Store whose appends cost nothing, so that
// BenchmarkSend measures the handler alone.
type instantStore struct {
	storage.Store
	seq uint64
}

func (s *instantStore) Append(_ context.Context, _ string, env []byte, _ int) (storage.Message, error) {
	s.seq++
	return storage.Message{Seq: s.seq, ReceivedAt: 1764115200123, Envelope: env}, nil
}

// BenchmarkSend is the CPU cost of POST /v1/messages in the handler, with
// real sealed envelopes of about 1 KiB and 256 KiB as clients send them.
func BenchmarkSend(b *testing.B) {
	link, err := kez.GenerateKeys().LinkTo(kez.GenerateKeys().Primary())
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{1 << 10, 256 << 10} {
		env, err := link.Seal(bytes.Repeat([]byte("x"), (size-400)*3/4))
		if err != nil {
			b.Fatal(err)
		}
		body := append(append([]byte(`{"to":"alice","envelope":`), env.AppendJSON(nil)...), '}')
		h := New(Config{Server: serverName}, &instantStore{}, hub.New(), nil)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, "/v1/messages", bytes.NewReader(body))
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusCreated {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}
