package handlers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"mime"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/kezchat/kez/kez"
)

// errBodyTimeout: the body did not arrive within BodyTimeout.
var errBodyTimeout = kez.Errorf("body_timeout", "the request body did not arrive in time")

// body is a request body as read: the bytes and their SHA-256 (hex, "" for
// an empty body), which request signatures cover (SPEC §2.0).
type body struct {
	data []byte
	hash string
}

// readJSONBody reads a POST or PUT body of at most limit bytes (tooBig
// when longer): it must be application/json (415 otherwise, so that a
// browser cannot send it without a CORS preflight) and arrive whole
// within BodyTimeout (408 body_timeout). Memory grows with the bytes that
// arrive, never with what Content-Length announces; a body announced
// larger than limit is still read up to limit, so that the client, still
// sending, can read the 413. An empty body needs no Content-Type. It
// writes the error and returns ok=false on failure.
func (h *Handler) readJSONBody(w http.ResponseWriter, r *http.Request, limit int64, tooBig func()) (body, bool) {
	if !jsonContentType(w, r) {
		return body{}, false
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
		tooBig()
		return body{}, false
	case err != nil && (expired || errors.Is(err, os.ErrDeadlineExceeded)):
		closeAfter(w)
		writeError(w, http.StatusRequestTimeout, errBodyTimeout.Code,
			"the request body did not arrive within "+h.cfg.BodyTimeout.String())
		return body{}, false
	case err != nil:
		closeAfter(w)
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "could not read the body")
		return body{}, false
	}
	// The body leaves in a slice of its own size: the scratch buffer goes
	// back to the pool, and what the handler keeps (the envelope, on its
	// way to storage and the hub) is exactly the bytes that came.
	if buf.Len() == 0 {
		return body{}, true
	}
	b := body{data: bytes.Clone(buf.Bytes())}
	sum := sha256.Sum256(b.data)
	b.hash = hex.EncodeToString(sum[:])
	return b, true
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

// jsonContentType checks that a request with a body says it is
// application/json, else answers 415 and returns false.
func jsonContentType(w http.ResponseWriter, r *http.Request) bool {
	if r.ContentLength == 0 {
		return true
	}
	ct := r.Header.Get("Content-Type")
	if ct == "application/json" || ct == "application/json; charset=utf-8" {
		return true // what clients send, accepted without parsing it
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		closeAfter(w)
		writeError(w, http.StatusUnsupportedMediaType, kez.CodeBadRequest,
			"the body must be sent as Content-Type: application/json")
		return false
	}
	return true
}

// readNoBody reads what should be an empty body (PUT and DELETE on a path
// that names everything): anything in it is a bad request.
func (h *Handler) readNoBody(w http.ResponseWriter, r *http.Request) bool {
	b, ok := h.readJSONBody(w, r, 0, func() {
		closeAfter(w)
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "this request takes no body")
	})
	return ok && len(b.data) == 0
}

// closeAfter ends the connection after this answer: the rest of a body we
// refused may still be on its way.
func closeAfter(w http.ResponseWriter) { w.Header().Set("Connection", "close") }

// tooLarge answers 413 envelope_too_large for a send body over the limit.
func (h *Handler) tooLarge(w http.ResponseWriter) func() {
	return func() {
		closeAfter(w)
		writeError(w, http.StatusRequestEntityTooLarge, kez.CodeEnvelopeTooLarge,
			"envelope is larger than "+strconv.FormatInt(h.cfg.MaxEnvelope, 10)+" bytes")
	}
}
