package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/kez"
)

// printer writes messages as one or more terminal lines:
//
//	#12 2026-11-26 09:30:01 alice@localhost: hello bob
//	#13 2026-11-26 09:30:05 [undecryptable envelope: signature does not verify …]
//
// The sender's address comes from the server's record for the primary that
// signed the envelope, not from what the plaintext claims.
type printer struct {
	c       *client.Client
	out     io.Writer
	senders map[string]string // primary → verified address, "" if none
	shown   *cursor           // what was shown, this run and before (replays are skipped)
	lastSeq uint64
}

func newPrinter(c *client.Client, out io.Writer, shown *cursor) *printer {
	return &printer{c: c, out: out, senders: map[string]string{}, shown: shown}
}

// print writes m unless it is a message already shown under another seq,
// and reports whether it wrote anything.
func (p *printer) print(ctx context.Context, m client.Message) bool {
	p.lastSeq = max(p.lastSeq, m.Seq)
	when := time.UnixMilli(m.ReceivedAt).Local().Format("2006-01-02 15:04:05")
	got, err := p.c.Open(m)
	if err != nil {
		fmt.Fprintf(p.out, "#%d %s [%s]\n", m.Seq, when, safeText(err.Error()))
		return true
	}
	if !p.shown.firstShowing(got.From, got.Plaintext.ID, m.Seq) {
		return false
	}
	from := p.sender(ctx, got.From, got.Plaintext.FromAddr)
	if got.Plaintext.Type != kez.PlaintextText {
		fmt.Fprintf(p.out, "#%d %s %s: [a %q message, which this client cannot show]\n", m.Seq, when, from, safeText(got.Plaintext.Type))
		return true
	}
	text := strings.ReplaceAll(safeText(got.Plaintext.Text), "\n", "\n    ")
	fmt.Fprintf(p.out, "#%d %s %s: %s\n", m.Seq, when, from, text)
	return true
}

// sender names who signed: the address the server has bound to the primary,
// flagged when the plaintext claims another. A primary the server has no
// handle for is named by its key; what its plaintext claims is shown only as
// an unverified claim, never as its name.
func (p *printer) sender(ctx context.Context, primary, claimed string) string {
	addr, known := p.senders[primary]
	if !known {
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		rec, err := p.c.LookupPrimary(ctx, primary)
		switch {
		case err == nil:
			addr = rec.Address
			p.senders[primary] = addr
		case client.IsUnknownUser(err):
			p.senders[primary] = "" // a definite answer; other errors are retried
		}
	}
	claimed = safeText(claimed)
	switch {
	case addr == "" && claimed == "":
		return keyName(primary)
	case addr == "":
		return fmt.Sprintf("%s (unverified claim: %q)", keyName(primary), claimed)
	case claimed != addr:
		return fmt.Sprintf("%s (claims to be %q)", addr, claimed)
	default:
		return addr
	}
}

// keyName names a key the server has no handle for by the start of its
// hex, grouped as the web client shows it: "unknown key d75a 9801 82b1 0ab7…".
func keyName(primary string) string {
	h := strings.TrimPrefix(primary, kez.PrimaryPrefix)
	if len(h) < 16 {
		return "unknown key" // not a primary; Open has already refused those
	}
	return fmt.Sprintf("unknown key %s %s %s %s…", h[0:4], h[4:8], h[8:12], h[12:16])
}

// safeText keeps terminal control out of what others wrote: control
// characters (escape sequences) and bidi overrides become U+FFFD; newlines
// and tabs stay.
func safeText(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\t':
			return r
		case unicode.IsControl(r), unicode.Is(unicode.Bidi_Control, r):
			return '\uFFFD'
		}
		return r
	}, s)
}

// describe words an error for a one-line message.
func describe(err error) string {
	var netErr *client.NetworkError
	var protoErr *client.ProtocolError
	var apiErr *client.APIError
	switch {
	case errors.As(err, &netErr):
		return fmt.Sprintf("cannot reach the server at %s (%v)", netErr.URL, netErr.Err)
	case errors.As(err, &protoErr):
		return fmt.Sprintf("%s does not answer like a KEZ chat server: %s", protoErr.URL, protoErr.Reason)
	case errors.As(err, &apiErr):
		switch apiErr.Code {
		case kez.CodeUnauthorized:
			return "the server did not accept your signature: " + apiErr.Message + " (is this computer's clock right?)"
		case kez.CodeRateLimited:
			return fmt.Sprintf("the server is limiting your requests; try again in %s", max(apiErr.RetryAfter, time.Second))
		case "":
			return "the server answered " + apiErr.Message
		}
		return fmt.Sprintf("the server refused: %s (%s)", apiErr.Message, apiErr.Code)
	}
	return err.Error()
}
