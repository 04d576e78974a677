package handlers

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// fail is the one place errors become answers: protocol errors at their
// code's status, storage sentinels (wrapped or not) as the table says, an
// apiError as it says, anything else 503 unavailable and logged.
func TestFailMapsErrorsToAnswers(t *testing.T) {
	logs := make(logLines, 64)
	h := New(Config{Server: serverName}, nil, nil, slog.New(slog.NewTextHandler(logs, nil)))
	for _, c := range []struct {
		err        error
		status     int
		code       string
		retryAfter string
		close      bool
	}{
		{kez.Errorf(kez.CodeInvalidHandle, "x"), 400, "invalid_handle", "", false},
		{kez.Errorf(kez.CodeUnknownRecipient, "x"), 404, "unknown_recipient", "", false},
		{kez.Errorf("no_such_code", "x"), 500, "no_such_code", "", false},
		{fmt.Errorf("reading: %w", kez.Errorf(kez.CodeStaleTimestamp, "x")), 400, "stale_timestamp", "", false},
		{storage.ErrNotFound, 404, "not_found", "", false},
		{fmt.Errorf("bolt: %w", storage.ErrHandleTaken), 409, "handle_taken", "", false},
		{storage.ErrPrimaryTaken, 409, "primary_taken", "", false},
		{storage.ErrInboxFull, 507, "inbox_full", "", false},
		{storage.ErrCoolingDown, 409, "handle_cooling_down", "", false},
		{storage.ErrBlocked, 403, "blocked", "", false},
		{storage.ErrInviteUsed, 403, "invalid_invite", "", false},
		{storage.ErrRequestLimit, 429, "request_limit", "60", false},
		{tooMany(1500*time.Millisecond, "too many"), 429, "rate_limited", "2", false},
		{tooMany(0, "too many"), 429, "rate_limited", "1", false},
		{errNotJSON, 415, "bad_request", "", true},
		{closing(kez.Errorf(kez.CodeBodyTimeout, "x")), 408, "body_timeout", "", true},
		{storage.ErrClosed, 503, "unavailable", "", false},
		{errors.New("disk on fire"), 503, "unavailable", "", false},
	} {
		w := httptest.NewRecorder()
		h.fail(w, httptest.NewRequest("GET", "/v1/x", nil), c.err)
		var body errorBody
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != c.status || body.Error.Code != c.code ||
			w.Header().Get("Retry-After") != c.retryAfter || (w.Header().Get("Connection") == "close") != c.close {
			t.Errorf("%v: %d %v %s, want %d %s (Retry-After %q, close %v)", c.err, w.Code, w.Header(), w.Body, c.status, c.code, c.retryAfter, c.close)
		}
	}
	if l := logs.String(); !strings.Contains(l, "disk on fire") || !strings.Contains(l, "storage closed") || strings.Contains(l, "not found") {
		t.Errorf("logged %q: want the two unknown errors and nothing else", l)
	}
}

// Every code that fail can produce has its status in statusOf.
func TestEveryAnswerHasAStatus(t *testing.T) {
	answers := []*apiError{errUnavailable, errNotJSON}
	for _, s := range sentinelErrors {
		answers = append(answers, s.answer)
	}
	for _, a := range answers {
		if _, ok := statusOf[a.code]; !ok {
			t.Errorf("code %q has no status", a.code)
		}
	}
}
