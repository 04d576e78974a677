package kez

import "fmt"

// The stable error codes of SPEC §2.11. Servers send them, clients match on them.
const (
	CodeBadRequest       = "bad_request"
	CodeInvalidHandle    = "invalid_handle"
	CodeReservedHandle   = "reserved_handle"
	CodeWrongServer      = "wrong_server"
	CodeStaleTimestamp   = "stale_timestamp"
	CodeUnsupportedAlg   = "unsupported_alg"
	CodeInvalidKey       = "invalid_key"
	CodeBadSignature     = "bad_signature"
	CodeMissingAuth      = "missing_auth"
	CodeUnauthorized     = "unauthorized"
	CodeNotFound         = "not_found"
	CodeUnknownRecipient = "unknown_recipient"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeHandleTaken      = "handle_taken"
	CodePrimaryTaken     = "primary_taken"
	CodeEnvelopeTooLarge = "envelope_too_large"
	CodeRateLimited      = "rate_limited"
	CodeInternal         = "internal"
	CodeUnavailable      = "unavailable"
	CodeInboxFull        = "inbox_full"

	// v2 (SPEC §2.11).
	CodeBodyTimeout        = "body_timeout"
	CodeUnknownSender      = "unknown_sender"
	CodeBlocked            = "blocked"
	CodeRequestLimit       = "request_limit"
	CodeHandleCoolingDown  = "handle_cooling_down"
	CodeFederationRefused  = "federation_refused"
	CodeSenderUnverified   = "sender_unverified"
	CodeSenderUnverifiable = "sender_unverifiable"

	// Beyond SPEC §2.11 (403): registration turned off, or an invite
	// missing, unknown or already used on an invite-only server.
	CodeRegistrationClosed = "registration_closed"
	CodeInvalidInvite      = "invalid_invite"
)

// Error is a protocol error: a stable code from SPEC §2.11 and a message for humans.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}
