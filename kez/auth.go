package kez

import (
	"crypto/ed25519"
	"encoding/hex"
	"strconv"
	"strings"
	"time"
)

// The strings signed for request authentication (SPEC §2.6–2.8). Each names its
// method, path and cursor, so a signature for one request never fits another.

// InboxAuthMessage is signed to read an inbox page.
func InboxAuthMessage(handle string, since uint64, ts int64) string {
	return "GET\n/v1/inbox/" + handle + "\nsince=" + strconv.FormatUint(since, 10) + "\n" + strconv.FormatInt(ts, 10)
}

// StreamAuthMessage is signed to open an inbox stream.
func StreamAuthMessage(handle string, ts int64) string {
	return "GET\n/v1/inbox/" + handle + "/stream\n" + strconv.FormatInt(ts, 10)
}

// AckAuthMessage is signed to acknowledge (delete) messages up to a seq.
func AckAuthMessage(handle string, upto uint64, ts int64) string {
	return "DELETE\n/v1/inbox/" + handle + "\nupto=" + strconv.FormatUint(upto, 10) + "\n" + strconv.FormatInt(ts, 10)
}

// SignAuth makes an auth value "<ts>:<sig hex>" for a message built with ts.
func SignAuth(priv ed25519.PrivateKey, msg string, ts int64) string {
	return strconv.FormatInt(ts, 10) + ":" + hex.EncodeToString(ed25519.Sign(priv, []byte(msg)))
}

// ParseAuth splits "<unix_ts>:<128 hex>" into its parts.
func ParseAuth(value string) (ts int64, sig []byte, err error) {
	tsPart, sigPart, ok := strings.Cut(value, ":")
	if !ok {
		return 0, nil, Errorf(CodeUnauthorized, "auth must be <unix_ts>:<signature hex>")
	}
	ts, perr := strconv.ParseInt(tsPart, 10, 64)
	if perr != nil || ts <= 0 || strconv.FormatInt(ts, 10) != tsPart {
		return 0, nil, Errorf(CodeUnauthorized, "auth timestamp is not a positive decimal number")
	}
	if len(sigPart) != 2*ed25519.SignatureSize || !isLowerHex(sigPart) {
		return 0, nil, Errorf(CodeUnauthorized, "auth signature must be %d lowercase hex digits", 2*ed25519.SignatureSize)
	}
	sig, _ = hex.DecodeString(sigPart)
	return ts, sig, nil
}

// VerifyAuth checks an auth value: its timestamp within skew of now, then the
// signature by pub over the message that msgFor builds for that timestamp.
func VerifyAuth(pub ed25519.PublicKey, value string, msgFor func(ts int64) string, now time.Time, skew time.Duration) error {
	ts, sig, err := ParseAuth(value)
	if err != nil {
		return err
	}
	if d := abs(ts - now.Unix()); d > int64(skew/time.Second) {
		return Errorf(CodeUnauthorized, "auth timestamp %d is more than %s from the server's clock (%d)", ts, skew, now.Unix())
	}
	if !ed25519.Verify(pub, []byte(msgFor(ts)), sig) {
		return Errorf(CodeUnauthorized, "auth signature does not verify for this handle and request")
	}
	return nil
}
