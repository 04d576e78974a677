package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

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

// writeKezError answers with a protocol error.
func writeKezError(w http.ResponseWriter, e *kez.Error) {
	status, ok := statusOf[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	writeError(w, status, e.Code, e.Message)
}

// fail answers with the error for err. Protocol errors keep their code;
// storage sentinels become theirs; anything else means storage is failing.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ke *kez.Error
	switch {
	case errors.As(err, &ke):
		writeKezError(w, ke)
	case errors.Is(err, storage.ErrNotFound):
		writeError(w, http.StatusNotFound, kez.CodeNotFound, "not found")
	case errors.Is(err, storage.ErrHandleTaken):
		writeError(w, http.StatusConflict, kez.CodeHandleTaken, "handle is already registered")
	case errors.Is(err, storage.ErrPrimaryTaken):
		writeError(w, http.StatusConflict, kez.CodePrimaryTaken, "this primary is already bound to another handle")
	case errors.Is(err, storage.ErrInboxFull):
		writeError(w, http.StatusInsufficientStorage, kez.CodeInboxFull, "the recipient's inbox is full")
	case errors.Is(err, storage.ErrCoolingDown):
		writeError(w, http.StatusConflict, kez.CodeHandleCoolingDown, "this handle was deleted recently and cannot be registered again yet")
	case errors.Is(err, storage.ErrBlocked):
		writeError(w, http.StatusForbidden, kez.CodeBlocked, "the recipient does not accept messages from you")
	case errors.Is(err, storage.ErrRequestLimit):
		// Requests free up when the recipient reads, accepts or deletes them.
		w.Header().Set("Retry-After", strconv.Itoa(int(requestRetry/time.Second)))
		writeError(w, http.StatusTooManyRequests, kez.CodeRequestLimit,
			"the recipient has not accepted you yet and holds as many of your (or all) message requests as allowed; wait until they answer")
	default:
		h.log.Error("storage failure", "method", r.Method, "path", r.URL.Path, "error", err)
		writeError(w, http.StatusServiceUnavailable, kez.CodeUnavailable, "storage is unavailable; try again later")
	}
}

// requestRetry is the Retry-After of request_limit: a guess, since only
// the recipient can free the slots.
const requestRetry = 60 * time.Second
