package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// Errors (SPEC §2.11). A handler writes its answer when it succeeds and
// returns an error otherwise; fail is the one place that turns an error
// into an answer (Caddy's caddyhttp.Error is the model):
//
//   - an *apiError answers as it says;
//   - a *kez.Error answers with its code, at that code's status (statusOf);
//   - a storage sentinel answers as sentinelErrors says;
//   - anything else means storage is failing: 503 unavailable, logged.
//
// A handler that wants its own message for a sentinel ("no handle "x"
// here") checks for it with errors.Is and returns a *kez.Error instead.

// apiFunc is an API handler that returns its error instead of writing it.
type apiFunc func(w http.ResponseWriter, r *http.Request) error

// serve adapts fn to net/http: its error is answered by fail.
func (h *Handler) serve(fn apiFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			h.fail(w, r, err)
		}
	}
}

// serveArg is serve for a handler of a path with a variable part (a handle
// or a primary).
func (h *Handler) serveArg(arg string, fn func(http.ResponseWriter, *http.Request, string) error) http.HandlerFunc {
	return h.serve(func(w http.ResponseWriter, r *http.Request) error { return fn(w, r, arg) })
}

// statusOf maps each SPEC §2.11 code to its HTTP status.
var statusOf = map[string]int{
	kez.CodeBadRequest:       http.StatusBadRequest,
	kez.CodeInvalidHandle:    http.StatusBadRequest,
	kez.CodeReservedHandle:   http.StatusBadRequest,
	kez.CodeWrongServer:      http.StatusBadRequest,
	kez.CodeStaleTimestamp:   http.StatusBadRequest,
	kez.CodeUnsupportedAlg:   http.StatusBadRequest,
	kez.CodeInvalidKey:       http.StatusBadRequest,
	kez.CodeBadSignature:     http.StatusBadRequest,
	kez.CodeMissingAuth:      http.StatusBadRequest,
	kez.CodeUnauthorized:     http.StatusUnauthorized,
	kez.CodeNotFound:         http.StatusNotFound,
	kez.CodeUnknownRecipient: http.StatusNotFound,
	kez.CodeMethodNotAllowed: http.StatusMethodNotAllowed,
	kez.CodeHandleTaken:      http.StatusConflict,
	kez.CodePrimaryTaken:     http.StatusConflict,
	kez.CodeEnvelopeTooLarge: http.StatusRequestEntityTooLarge,
	kez.CodeRateLimited:      http.StatusTooManyRequests,
	kez.CodeInternal:         http.StatusInternalServerError,
	kez.CodeUnavailable:      http.StatusServiceUnavailable,
	kez.CodeInboxFull:        http.StatusInsufficientStorage,

	kez.CodeBodyTimeout:        http.StatusRequestTimeout,
	kez.CodeUnknownSender:      http.StatusForbidden,
	kez.CodeBlocked:            http.StatusForbidden,
	kez.CodeRequestLimit:       http.StatusTooManyRequests,
	kez.CodeHandleCoolingDown:  http.StatusConflict,
	kez.CodeFederationRefused:  http.StatusForbidden,
	kez.CodeSenderUnverified:   http.StatusForbidden,
	kez.CodeSenderUnverifiable: http.StatusServiceUnavailable,

	kez.CodeRegistrationClosed: http.StatusForbidden,
	kez.CodeInvalidInvite:      http.StatusForbidden,
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeJSON answers with v as JSON. HTML escaping is off: these are API
// answers, and escaping would alter stored signed text (registrations).
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	body := []byte(`{"error":{"code":"internal","message":"response encoding failed"}}`)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
	} else {
		body = bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	}
	writeRaw(w, status, "application/json; charset=utf-8", body)
}

func writeRaw(w http.ResponseWriter, status int, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, errorBody{errorDetail{Code: code, Message: msg}})
}

// apiError is an error answer with more to it than a *kez.Error: a status
// other than its code's, a Retry-After, or the end of the connection.
type apiError struct {
	status     int // 0: the code's status (statusOf)
	code       string
	message    string
	retryAfter int   // seconds, sent as Retry-After when > 0
	close      bool  // end the connection: the rest of a refused body may still be on its way
	cause      error // what it answers, for errors.Is
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func (e *apiError) Unwrap() error { return e.cause }

// closing is e answered with Connection: close.
func closing(e *kez.Error) *apiError {
	return &apiError{code: e.Code, message: e.Message, close: true, cause: e}
}

// tooMany is 429 rate_limited with Retry-After.
func tooMany(wait time.Duration, what string) *apiError {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	return &apiError{code: kez.CodeRateLimited, retryAfter: secs,
		message: what + "; retry in " + strconv.Itoa(secs) + "s"}
}

// requestRetry is the Retry-After of request_limit: a guess, since only
// the recipient can free the slots.
const requestRetry = 60 * time.Second

// sentinelErrors answer the storage sentinels. A handler with a more
// precise message for one checks for it itself.
var sentinelErrors = []struct {
	err    error
	answer *apiError
}{
	{storage.ErrNotFound, &apiError{code: kez.CodeNotFound, message: "not found"}},
	{storage.ErrHandleTaken, &apiError{code: kez.CodeHandleTaken, message: "handle is already registered"}},
	{storage.ErrPrimaryTaken, &apiError{code: kez.CodePrimaryTaken, message: "this primary is already bound to another handle"}},
	{storage.ErrInboxFull, &apiError{code: kez.CodeInboxFull, message: "the recipient's inbox is full"}},
	{storage.ErrCoolingDown, &apiError{code: kez.CodeHandleCoolingDown, message: "this handle was deleted recently and cannot be registered again yet"}},
	{storage.ErrBlocked, &apiError{code: kez.CodeBlocked, message: "the recipient does not accept messages from you"}},
	{storage.ErrInviteUsed, &apiError{code: kez.CodeInvalidInvite, message: "this invite has already been used"}},
	// Requests free up when the recipient reads, accepts or deletes them.
	{storage.ErrRequestLimit, &apiError{code: kez.CodeRequestLimit, retryAfter: int(requestRetry / time.Second),
		message: "the recipient has not accepted you yet and holds as many of your (or all) message requests as allowed; wait until they answer"}},
}

// errUnavailable answers any other error: storage is failing.
var errUnavailable = &apiError{code: kez.CodeUnavailable, message: "storage is unavailable; try again later"}

// answerOf is the answer to err, or nil when err is none of ours.
func answerOf(err error) *apiError {
	if ae, ok := errors.AsType[*apiError](err); ok {
		return ae
	}
	if ke, ok := errors.AsType[*kez.Error](err); ok {
		return &apiError{code: ke.Code, message: ke.Message}
	}
	for _, s := range sentinelErrors {
		if errors.Is(err, s.err) {
			return s.answer
		}
	}
	return nil
}

// fail answers with the error for err; an error none of ours is logged as
// a storage failure.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	a := answerOf(err)
	if a == nil {
		h.log.Error("storage failure", "method", r.Method, "path", r.URL.Path, "error", err)
		a = errUnavailable
	}
	a.write(w)
}

func (e *apiError) write(w http.ResponseWriter) {
	status := e.status
	if status == 0 {
		var ok bool
		if status, ok = statusOf[e.code]; !ok {
			status = http.StatusInternalServerError
		}
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	if e.close {
		closeAfter(w)
	}
	writeError(w, status, e.code, e.message)
}
