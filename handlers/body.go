package handlers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"mime"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/kezchat/kez/kez"
)

// body is a request body as read: the bytes and their SHA-256 (hex, "" for
// an empty body), which request signatures cover (SPEC §2.0).
type body struct {
	data []byte
	hash string
}

// readBody reads a POST or PUT body of at most limit bytes: it must be
// application/json (415 otherwise, so that a browser cannot send it
// without a CORS preflight) and arrive whole within BodyTimeout (408
// body_timeout). A longer body is answered with tooBig. Memory grows with
// the bytes that arrive, never with what Content-Length announces; a body
// announced larger than limit is still read up to limit, so that the
// client, still sending, can read the answer. An empty body needs no
// Content-Type. Every refusal ends the connection after the answer.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, limit int64, tooBig *kez.Error) (body, error) {
	if err := checkContentType(r); err != nil {
		return body{}, err
	}
	rc := http.NewResponseController(w)
	deadline := time.Now().Add(h.cfg.BodyTimeout)
	// Where the writer cannot set a read deadline, closing the body ends a
	// read that is still waiting when time is up.
	timer := (*time.Timer)(nil)
	if err := rc.SetReadDeadline(deadline); err != nil {
		timer = time.AfterFunc(h.cfg.BodyTimeout, func() { _ = r.Body.Close() })
	}
	buf := bodyBuffers.Get().(*bytes.Buffer)
	defer putBodyBuffer(buf)
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	expired := !time.Now().Before(deadline)
	if timer != nil {
		expired = !timer.Stop() || expired
	} else if err == nil {
		// The body is in: the connection may serve more requests. After a
		// failure the deadline stays, so that net/http's attempt to drain
		// the rest of the body before answering gives up at once instead
		// of waiting for a client that sends nothing.
		_ = rc.SetReadDeadline(time.Time{})
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return body{}, closing(tooBig)
	case err != nil && (expired || errors.Is(err, os.ErrDeadlineExceeded)):
		return body{}, closing(kez.Errorf(kez.CodeBodyTimeout, "the request body did not arrive within %s", h.cfg.BodyTimeout))
	case err != nil:
		return body{}, closing(kez.Errorf(kez.CodeBadRequest, "could not read the body"))
	}
	// The body leaves in a slice of its own size: the scratch buffer goes
	// back to the pool, and what the handler keeps (the envelope, on its
	// way to storage and the hub) is exactly the bytes that came.
	if buf.Len() == 0 {
		return body{}, nil
	}
	b := body{data: bytes.Clone(buf.Bytes())}
	sum := sha256.Sum256(b.data)
	b.hash = hex.EncodeToString(sum[:])
	return b, nil
}

// bodyBuffers are scratch buffers that request bodies are read into. A
// body grows its buffer as its bytes arrive, whatever it announced; read
// into a fresh bytes.Buffer, a 1 KiB body cost four allocations of 3.5 KiB
// in all, and a 256 KiB one a MiB.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody bounds the buffers kept for reuse: one that grew for a
// larger body is left to the garbage collector.
const maxPooledBody = 1 << 20

func putBodyBuffer(buf *bytes.Buffer) {
	if buf.Cap() > maxPooledBody {
		return
	}
	buf.Reset()
	bodyBuffers.Put(buf)
}

// checkContentType checks that a request with a body says it is
// application/json (415 bad_request otherwise).
func checkContentType(r *http.Request) error {
	if r.ContentLength == 0 {
		return nil
	}
	ct := r.Header.Get("Content-Type")
	if ct == "application/json" || ct == "application/json; charset=utf-8" {
		return nil // what clients send, accepted without parsing it
	}
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return errNotJSON
	}
	return nil
}

var errNotJSON = &apiError{status: http.StatusUnsupportedMediaType, code: kez.CodeBadRequest, close: true,
	message: "the body must be sent as Content-Type: application/json"}

// noBody reads what should be an empty body (PUT and DELETE on a path
// that names everything): anything in it is a bad request.
func (h *Handler) noBody(w http.ResponseWriter, r *http.Request) error {
	_, err := h.readBody(w, r, 0, kez.Errorf(kez.CodeBadRequest, "this request takes no body"))
	return err
}

// closeAfter ends the connection after this answer: the rest of a body we
// refused may still be on its way.
func closeAfter(w http.ResponseWriter) { w.Header().Set("Connection", "close") }

// errTooLarge is 413 envelope_too_large for a send body over the limit.
func (h *Handler) errTooLarge() *kez.Error {
	return kez.Errorf(kez.CodeEnvelopeTooLarge, "envelope is larger than %d bytes", h.cfg.MaxEnvelope)
}
