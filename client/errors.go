package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kezchat/kez/kez"
)

// APIError is an error answer from a KEZ server: the HTTP status and the
// stable code and message of SPEC §2.11. Compare with errors.Is against the
// Err* sentinels, which match on Code alone (ErrUnsupportedMediaType, whose
// code is the generic bad_request, on the status).
type APIError struct {
	Status     int
	Code       string // "" when the body was not a KEZ error (a proxy page, say)
	Message    string
	RetryAfter time.Duration // from Retry-After: rate_limited, request_limit, unavailable
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("%s: %s (HTTP %d)", e.Code, e.Message, e.Status)
}

// Is makes errors.Is(err, client.ErrNotFound) and friends match by code,
// and a sentinel without a code by status.
func (e *APIError) Is(target error) bool {
	t, ok := target.(*APIError)
	switch {
	case !ok:
		return false
	case t.Code != "":
		return t.Code == e.Code
	default:
		return t.Status != 0 && t.Status == e.Status
	}
}

// Sentinels for the codes a client commonly acts on.
var (
	ErrBadRequest       = &APIError{Code: kez.CodeBadRequest}
	ErrInvalidHandle    = &APIError{Code: kez.CodeInvalidHandle}
	ErrReservedHandle   = &APIError{Code: kez.CodeReservedHandle}
	ErrWrongServer      = &APIError{Code: kez.CodeWrongServer}
	ErrStaleTimestamp   = &APIError{Code: kez.CodeStaleTimestamp}
	ErrMissingAuth      = &APIError{Code: kez.CodeMissingAuth}
	ErrUnauthorized     = &APIError{Code: kez.CodeUnauthorized}
	ErrNotFound         = &APIError{Code: kez.CodeNotFound}
	ErrUnknownRecipient = &APIError{Code: kez.CodeUnknownRecipient}
	ErrHandleTaken      = &APIError{Code: kez.CodeHandleTaken}
	ErrPrimaryTaken     = &APIError{Code: kez.CodePrimaryTaken}
	ErrEnvelopeTooLarge = &APIError{Code: kez.CodeEnvelopeTooLarge}
	ErrRateLimited      = &APIError{Code: kez.CodeRateLimited}
	ErrUnavailable      = &APIError{Code: kez.CodeUnavailable}
	ErrInboxFull        = &APIError{Code: kez.CodeInboxFull}

	// v2 (SPEC §2.5, §2.9).

	// ErrUnknownSender (403): the sending key is not a user of the server.
	ErrUnknownSender = &APIError{Code: kez.CodeUnknownSender}
	// ErrBlocked (403): the recipient has blocked the sender.
	ErrBlocked = &APIError{Code: kez.CodeBlocked}
	// ErrRequestLimit (429): the sender is not the recipient's contact and
	// has as many unanswered requests in that inbox as the server allows
	// (or the inbox holds as many requests as it takes); see RetryAfter.
	ErrRequestLimit = &APIError{Code: kez.CodeRequestLimit}
	// ErrBodyTimeout (408): the body did not reach the server in time.
	ErrBodyTimeout = &APIError{Code: kez.CodeBodyTimeout}
	// ErrUnsupportedMediaType (415): a body not sent as application/json.
	ErrUnsupportedMediaType = &APIError{Status: http.StatusUnsupportedMediaType}

	// Federation (SPEC §8).

	// ErrFederationRefused (403): the recipient's server does not take
	// messages from the sender's server (its policy, or a server name it
	// may not fetch from).
	ErrFederationRefused = &APIError{Code: kez.CodeFederationRefused}
	// ErrSenderUnverified (403): the recipient's server fetched the
	// sender's record from the sender's server and it did not verify.
	ErrSenderUnverified = &APIError{Code: kez.CodeSenderUnverified}
	// ErrSenderUnverifiable (503): the recipient's server could not reach
	// the sender's server to verify the sender; try again later.
	ErrSenderUnverifiable = &APIError{Code: kez.CodeSenderUnverifiable}
)

// IsTemporary reports whether a send that failed with err may succeed
// later as it is: the server could not be reached, or answered that it is
// unwell (5xx, including 503 sender_unverifiable), busy (429
// rate_limited) or too slow to read the body (408). Refusals (4xx) are not.
func IsTemporary(err error) bool {
	var netErr *NetworkError
	var apiErr *APIError
	switch {
	case errors.As(err, &netErr), errors.Is(err, context.DeadlineExceeded):
		return true
	case errors.As(err, &apiErr):
		return apiErr.Status >= 500 || apiErr.Code == kez.CodeRateLimited || apiErr.Status == http.StatusRequestTimeout
	}
	return false
}

// CodeOf returns the KEZ error code in err's chain, or "".
func CodeOf(err error) string {
	var e *APIError
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// IsUnknownUser reports whether err says the user does not exist: not_found
// from a lookup or unknown_recipient from a send.
func IsUnknownUser(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnknownRecipient)
}

// NetworkError means the server could not be reached or the connection broke.
type NetworkError struct {
	URL string
	Err error
}

func (e *NetworkError) Error() string { return "cannot reach " + e.URL + ": " + e.Err.Error() }
func (e *NetworkError) Unwrap() error { return e.Err }

// ProtocolError means the server answered, but not as SPEC §2 says it must:
// likely not a KEZ server at that URL, or an incompatible version.
type ProtocolError struct {
	URL    string
	Reason string
}

func (e *ProtocolError) Error() string { return e.URL + ": unexpected answer: " + e.Reason }

// maxErrorBody bounds what we read of an error answer.
const maxErrorBody = 64 << 10

// apiError turns a non-2xx answer into an *APIError. The body is the
// SPEC §2 error JSON when a KEZ server wrote it; anything else keeps the status
// and a short excerpt so the user sees what answered instead.
func apiError(status int, header http.Header, body []byte) *APIError {
	e := &APIError{Status: status, RetryAfter: retryAfter(header.Get("Retry-After"))}
	var parsed struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &parsed) == nil && parsed.Error.Code != "" {
		e.Code, e.Message = parsed.Error.Code, parsed.Error.Message
		return e
	}
	e.Message = http.StatusText(status)
	if excerpt := strings.TrimSpace(string(body)); excerpt != "" {
		if len(excerpt) > 120 {
			excerpt = excerpt[:120] + "…"
		}
		e.Message += ": " + strings.Join(strings.Fields(excerpt), " ")
	}
	return e
}

// retryAfter reads Retry-After in its delay-seconds form; dates are rare
// enough from an API that they are ignored.
func retryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}
