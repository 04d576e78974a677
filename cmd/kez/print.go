package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/kez"
)

// printer renders messages as one or more terminal lines:
//
//	#12 2026-11-26 09:30:01 alice@localhost: hello bob
//	#13 2026-11-26 09:30:05 [undecryptable envelope: signature does not verify …]
//	#14 2026-11-26 09:31:00 request from carol@localhost (not a contact): hi
//
// The sender's address comes from the server's record for the primary that
// signed the envelope (a record signed by that key), not from what the
// plaintext claims.
type printer struct {
	c       *client.Client
	self    string             // our own primary: copies are accepted only from it
	senders map[string]*sender // primary → its verified address and trust
	shown   *cursor            // what was shown, this run and before (replays are skipped)
	lastSeq uint64
	// receiptsAfter: texts after this seq are new here and owe their
	// sender a delivered receipt (SPEC §3); owed gathers them per sender.
	receiptsAfter uint64
	owed          map[string]*owedReceipt
}

// owedReceipt is a delivered receipt to send: the ids a contact's current key wrote.
type owedReceipt struct {
	from string // the key that wrote, which the receipt is sealed to
	ids  []string
}

// sender is what the printer knows of a key that signed a message.
type sender struct {
	addr string // the address the log binds it to now, "" if none
	// mark is shown after the name: a key that is not the pinned one, an
	// earlier key of a contact, a record the log does not back.
	mark string
}

func newPrinter(c *client.Client, shown *cursor) *printer {
	self := ""
	if k := c.Keys(); k != nil {
		self = k.Primary()
	}
	return &printer{c: c, self: self, senders: map[string]*sender{}, shown: shown}
}

// format renders m, or returns "" for a message not to be shown: one
// already shown under another seq, or a receipt. markRequest names a
// request as such in its line ("request from … (not a contact)"), for
// output that does not show requests in a section of their own.
func (p *printer) format(ctx context.Context, m client.Message, markRequest bool) string {
	p.lastSeq = max(p.lastSeq, m.Seq)
	received := time.UnixMilli(m.ReceivedAt)
	when := received.Local().Format("2006-01-02 15:04:05")
	got, err := p.c.Open(m)
	if err != nil {
		who := ""
		if m.Request && markRequest {
			who = "request (not a contact): "
		}
		return fmt.Sprintf("#%d %s %s[%s]", m.Seq, when, who, safeText(err.Error()))
	}
	pt := got.Plaintext
	if !p.shown.firstShowing(got.From, pt.ID, m.Seq) {
		return ""
	}
	from, notices := p.sender(ctx, got.From, got.FromAddr, pt.FromAddr)
	p.noteDelivered(ctx, m, got)
	line := p.formatText(m, got, pt, from, when, markRequest)
	if line == "" {
		return strings.TrimSuffix(notices, "\n")
	}
	return notices + line
}

// formatText is format for a message that opened and is to be shown.
func (p *printer) formatText(m client.Message, got *client.Received, pt kez.Plaintext, from, when string, markRequest bool) string {
	received := time.UnixMilli(m.ReceivedAt)
	if m.Request && markRequest {
		from = "request from " + from + " (not a contact)"
	}
	if pt.SentAt != 0 {
		// The sender's clock, which it signed, when it is far from the
		// server's: a message held back, or a wrong clock (SPEC §3).
		if sent := time.UnixMilli(pt.SentAt); sent.Sub(received).Abs() > 5*time.Minute {
			when += " (sent " + sent.Local().Format("2006-01-02 15:04:05") + ")"
		}
	}
	var text string
	switch pt.Type {
	case kez.PlaintextText:
		text = pt.Text
	case "receipt":
		state, n, ok := parseReceipt(got.PlaintextJSON)
		if !ok {
			return fmt.Sprintf("#%d %s %s: [unsupported message]", m.Seq, when, from)
		}
		// This client keeps no sent messages to mark: it says what the receipt says.
		return fmt.Sprintf("#%d %s %s: ✓✓ %s (%d of your messages)", m.Seq, when, from, state, n)
	case "copy":
		c, ok := parseCopy(got.PlaintextJSON)
		if !ok || got.From != p.self {
			return fmt.Sprintf("#%d %s %s: [unsupported message]", m.Seq, when, from)
		}
		to := safeText(c.toAddr)
		if to == "" {
			to = keyName(c.to)
		}
		return fmt.Sprintf("#%d %s you → %s (sent from another device): %s", m.Seq, when, to, indent(safeText(c.text)))
	default:
		return fmt.Sprintf("#%d %s %s: [unsupported message]", m.Seq, when, from)
	}
	return fmt.Sprintf("#%d %s %s: %s", m.Seq, when, from, indent(safeText(text)))
}

// indent puts continuation lines under the first.
func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n    ") }

// parseReceipt reads {"type":"receipt","id",…,"sent_at",…,"of":[ids],"state":"delivered"|"read"}
// with exact member names: its state and how many messages it names.
func parseReceipt(raw []byte) (state string, n int, ok bool) {
	f, err := kez.ExactMembers(raw, []string{"type", "id", "sent_at", "of", "state"}, nil)
	if err != nil {
		return "", 0, false
	}
	var of []string
	if json.Unmarshal(f["state"], &state) != nil || json.Unmarshal(f["of"], &of) != nil || len(of) == 0 {
		return "", 0, false
	}
	if state != "delivered" && state != "read" {
		return "", 0, false
	}
	return state, len(of), true
}

// noteDelivered owes a delivered receipt for m when it is a new text from
// a contact's current, verified key: never for a request, an unverified or
// changed key, or one of our own copies.
func (p *printer) noteDelivered(ctx context.Context, m client.Message, got *client.Received) {
	if m.Seq <= p.receiptsAfter || m.Request || got.Plaintext.Type != kez.PlaintextText || got.From == p.self {
		return
	}
	s, _ := p.lookup(ctx, got.From, got.FromAddr)
	if s.addr == "" || s.mark != "" {
		return
	}
	if p.owed == nil {
		p.owed = map[string]*owedReceipt{}
	}
	o := p.owed[s.addr]
	if o == nil || o.from != got.From {
		o = &owedReceipt{from: got.From}
		p.owed[s.addr] = o
	}
	o.ids = append(o.ids, got.Plaintext.ID)
}

// takeReceipts hands over what noteDelivered gathered, for sendReceipts.
func (p *printer) takeReceipts() map[string]*owedReceipt {
	owed := p.owed
	p.owed = nil
	return owed
}

// sendReceipts sends owed receipts, one per contact (in pieces of
// client.MaxReceiptIDs), each within requestTimeout. A receipt that cannot
// go is only noted on warn: it changes a mark on the other side, nothing
// more.
func sendReceipts(ctx context.Context, c *client.Client, owed map[string]*owedReceipt, warn io.Writer) {
	for addr, o := range owed {
		for ids := range slices.Chunk(o.ids, client.MaxReceiptIDs) {
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			err := c.SendReceipt(rctx, addr, o.from, "delivered", ids)
			cancel()
			if err != nil {
				fmt.Fprintf(warn, "note: no delivered receipt to %s: %s\n", addr, oneLine(describe(err)))
				break
			}
		}
	}
}

// copyMessage is the part of a "copy" plaintext (SPEC §3) that is shown: a
// message one of our other devices sent.
type copyMessage struct{ to, toAddr, text string }

// parseCopy reads {"type":"copy","id",…,"sent_at",…,"to":…,"to_addr":…,"of":{text}}
// with exact member names; the copied message must be a text.
func parseCopy(raw []byte) (copyMessage, bool) {
	f, err := kez.ExactMembers(raw, []string{"type", "id", "sent_at", "to", "of"}, []string{"to_addr"})
	if err != nil {
		return copyMessage{}, false
	}
	var c copyMessage
	if json.Unmarshal(f["to"], &c.to) != nil || !kez.WellFormedPrimary(c.to) {
		return copyMessage{}, false
	}
	if v, ok := f["to_addr"]; ok && json.Unmarshal(v, &c.toAddr) != nil {
		return copyMessage{}, false
	}
	of, err := kez.ParsePlaintext(f["of"])
	if err != nil || of.Type != kez.PlaintextText {
		return copyMessage{}, false
	}
	c.text = of.Text
	return c, true
}

// sender names who signed: the address the server has bound to the primary
// (in a record that the primary signed and that the log proves is the
// current binding), flagged when the plaintext claims another, or when the
// message object names another, and marked when the key is not the one
// pinned for that address. A primary the server has no handle for is named
// by its key (or as an earlier key of a contact); what its plaintext claims
// is shown only as an unverified claim, never as its name. notices are
// lines to print before the message: the sender's rotations followed.
func (p *printer) sender(ctx context.Context, primary, serverAddr, claimed string) (name, notices string) {
	s, notices := p.lookup(ctx, primary, serverAddr)
	addr := s.addr
	claimed, serverAddr = safeText(claimed), safeText(serverAddr)
	name = addr
	if addr == "" {
		name = keyName(primary)
		if serverAddr != "" {
			name += fmt.Sprintf(" (the server says %q)", serverAddr)
		}
	} else if serverAddr != "" && serverAddr != addr {
		name += fmt.Sprintf(" (the server says %q)", serverAddr)
	}
	name += s.mark
	switch {
	case claimed == "" || claimed == addr:
		return name, notices
	case addr == "":
		return fmt.Sprintf("%s (unverified claim: %q)", name, claimed), notices
	default:
		return fmt.Sprintf("%s (claims to be %q)", name, claimed), notices
	}
}

// address is the verified address of primary ("" if it has none): on our
// server, or at the server of fromAddr when it names another (SPEC §8).
// A key known only as the pinned key of another server's contact is named
// by that pin.
func (p *printer) address(ctx context.Context, primary, fromAddr string) string {
	s, _ := p.lookup(ctx, primary, fromAddr)
	if s.addr == "" && fromAddr == "" {
		if h, how := p.c.PinnedHandle(primary); how == "pinned" && strings.Contains(h, "@") {
			return h + " (pinned)"
		}
	}
	return s.addr
}

// lookup finds who primary is, once per run: the record bound to it,
// checked in the log and against the pin of its handle (pinned now if it
// is the first use). A sender from another server (fromAddr names it) is
// looked up at that server, which must bind the address to primary.
// Rotation notices come back once, as lines.
func (p *printer) lookup(ctx context.Context, primary, fromAddr string) (*sender, string) {
	key := primary + "|" + fromAddr
	if s, known := p.senders[key]; known {
		return s, ""
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	s := &sender{}
	notices := ""
	ct, err := p.c.Sender(ctx, primary, fromAddr, primary != p.self)
	var se *client.SenderError
	switch {
	case err == nil:
		s.addr = ct.Address
		for _, n := range ct.Notices {
			notices += "notice: " + n.String() + "\n"
		}
		if ct.Status == client.ContactChanged {
			s.mark = fmt.Sprintf(" [NEW KEY, not accepted: %s; kez accept-key %s, or kez verify %s]", ct.Pin.Changed.How, ct.Who(), ct.Who())
		}
		p.senders[key] = s
	case errors.As(err, &se) && se.Previous:
		s.mark = fmt.Sprintf(" [an earlier key of %s]", se.Addr)
		p.senders[key] = s
	case errors.As(err, &se):
		s.mark = " [NOT VERIFIED: " + oneLine(err.Error()) + "]"
		p.senders[key] = s
	case client.IsUnknownUser(err):
		// No handle now: an earlier key of a contact, or a stranger's.
		if h, how := p.c.PinnedHandle(primary); h != "" && how == "previous" {
			s.mark = fmt.Sprintf(" [an earlier key of %s]", h)
		}
		p.senders[key] = s // a definite answer; other errors are retried
	case client.IsTrustFailure(err):
		s.mark = " [the server's log does not back its record: " + oneLine(err.Error()) + "]"
		p.senders[key] = s
	case err != nil && isRemoteAddr(ctx, p.c, fromAddr):
		// Its server could not be asked: shown unverified, asked again next time.
		s.mark = " [NOT VERIFIED: could not check " + safeText(fromAddr) + " at its server: " + oneLine(describe(err)) + "]"
	}
	return s, notices
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
	var logErr *client.LogError
	switch {
	case errors.As(err, &logErr) && strings.Contains(logErr.Reason, "not signed by the pinned log key"):
		return err.Error() + ". The server signs its log with another key than the one pinned at first contact: " +
			"it was reset, or it is not the server you registered with, or someone is in between. " +
			"If you know it was reset: kez log reset --yes (kez log status shows what is kept)"
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
		case kez.CodeBodyTimeout:
			return "the message did not reach the server in time; check your connection and send it again"
		case "":
			return "the server answered " + apiErr.Message
		}
		return fmt.Sprintf("the server refused: %s (%s)", apiErr.Message, apiErr.Code)
	}
	return err.Error()
}

// isRemoteAddr reports whether addr names another server than c's.
func isRemoteAddr(ctx context.Context, c *client.Client, addr string) bool {
	_, server := kez.SplitAddress(addr)
	if server == "" {
		return false
	}
	name, err := c.ServerName(ctx)
	return err == nil && server != name
}
