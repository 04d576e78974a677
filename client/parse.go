package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/kezchat/kez/kez"
)

// The server's answers are read with the rules of SPEC §1: every member
// named exactly, once, and none that SPEC §2 does not define. Go's
// encoding/json would take "Seq" for "seq" and the last of two "from"s,
// while the browser client reads them as written: one answer could mean
// two things.

// members reads an answer object with kez.ExactMembers and names the object
// in the error.
func members(what string, data []byte, required, optional []string) (map[string][]byte, error) {
	m, err := kez.ExactMembers(data, required, optional)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", what, err)
	}
	return m, nil
}

// jsonString decodes a JSON string literal that the strict scanner has
// checked.
func jsonString(name string, v []byte) (string, error) {
	if len(v) < 2 || v[0] != '"' {
		return "", fmt.Errorf("%s must be a string", name)
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return string(v[1 : len(v)-1]), nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", fmt.Errorf("%s: %v", name, err)
	}
	return s, nil
}

// jsonUint decodes a non-negative integer written without fraction or exponent.
func jsonUint(name string, v []byte) (uint64, error) {
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %s is not a non-negative integer", name, v)
	}
	return n, nil
}

// jsonInt decodes an integer written without fraction or exponent.
func jsonInt(name string, v []byte) (int64, error) {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %s is not an integer", name, v)
	}
	return n, nil
}

func jsonBool(name string, v []byte) (bool, error) {
	switch string(v) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("%s: %s is not true or false", name, v)
}

// firstError returns the first non-nil error.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

var (
	messageRequired = []string{"seq", "from", "request", "envelope", "received_at"}
	messageOptional = []string{"from_addr"}
)

// parseMessage reads the message object of SPEC §2.5 in one strict pass,
// without reflection: streams carry every message, some of them 256 KiB.
// The envelope is copied out of data, which the SSE reader reuses; it is
// checked here only for being an object, and opened by Open.
func parseMessage(data []byte) (Message, error) {
	var m Message
	f, err := members("message", data, messageRequired, messageOptional)
	if err != nil {
		return m, err
	}
	var errs [6]error
	m.Seq, errs[0] = jsonUint("seq", f["seq"])
	m.From, errs[1] = jsonString("from", f["from"])
	m.Request, errs[2] = jsonBool("request", f["request"])
	m.ReceivedAt, errs[3] = jsonInt("received_at", f["received_at"])
	if v, ok := f["from_addr"]; ok {
		m.FromAddr, errs[4] = jsonString("from_addr", v)
	}
	if env := f["envelope"]; env[0] != '{' {
		errs[5] = errors.New("envelope must be an object")
	} else {
		m.Envelope = append(json.RawMessage(nil), env...)
	}
	if err := firstError(errs[:]...); err != nil {
		return Message{}, fmt.Errorf("message: %w", err)
	}
	if m.Seq == 0 {
		return Message{}, errors.New("message: seq must be positive")
	}
	return m, nil
}

// parseInboxPage reads {"messages":[…],"next_since":n,"more":b} (SPEC §2.6).
func parseInboxPage(data []byte) (*InboxPage, error) {
	f, err := members("inbox page", data, []string{"messages", "next_since", "more"}, nil)
	if err != nil {
		return nil, err
	}
	var page InboxPage
	var errs [2]error
	page.NextSince, errs[0] = jsonUint("next_since", f["next_since"])
	page.More, errs[1] = jsonBool("more", f["more"])
	if err := firstError(errs[:]...); err != nil {
		return nil, fmt.Errorf("inbox page: %w", err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(f["messages"], &raw); err != nil {
		return nil, fmt.Errorf("inbox page: messages must be an array: %v", err)
	}
	page.Messages = make([]Message, len(raw))
	for i, r := range raw {
		if page.Messages[i], err = parseMessage(r); err != nil {
			return nil, fmt.Errorf("inbox page: message %d: %w", i, err)
		}
		if i > 0 && page.Messages[i].Seq <= page.Messages[i-1].Seq {
			return nil, fmt.Errorf("inbox page: seq %d follows %d", page.Messages[i].Seq, page.Messages[i-1].Seq)
		}
	}
	return &page, nil
}

// parseReceipt reads {"seq":12,"to":"alice","received_at":…} (SPEC §2.5).
func parseReceipt(data []byte) (*Receipt, error) {
	f, err := members("receipt", data, []string{"seq", "to", "received_at"}, nil)
	if err != nil {
		return nil, err
	}
	var r Receipt
	var errs [3]error
	r.Seq, errs[0] = jsonUint("seq", f["seq"])
	r.To, errs[1] = jsonString("to", f["to"])
	r.ReceivedAt, errs[2] = jsonInt("received_at", f["received_at"])
	if err := firstError(errs[:]...); err != nil {
		return nil, fmt.Errorf("receipt: %w", err)
	}
	return &r, nil
}

// parseRecord reads a handle record (SPEC §2.3). "log" (SPEC §5) and
// "rotation" (SPEC §2.10) are kept as they are, for the trust checks.
func parseRecord(data []byte) (*Record, error) {
	f, err := members("record", data,
		[]string{"handle", "server", "address", "primary", "registered_at", "registration"},
		[]string{"log", "rotation"})
	if err != nil {
		return nil, err
	}
	var r Record
	var errs [5]error
	r.Handle, errs[0] = jsonString("handle", f["handle"])
	r.Server, errs[1] = jsonString("server", f["server"])
	r.Address, errs[2] = jsonString("address", f["address"])
	r.Primary, errs[3] = jsonString("primary", f["primary"])
	r.RegisteredAt, errs[4] = jsonInt("registered_at", f["registered_at"])
	if err := firstError(errs[:]...); err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	r.Registration = json.RawMessage(f["registration"])
	r.Log = json.RawMessage(f["log"])
	r.Rotation = json.RawMessage(f["rotation"])
	return &r, nil
}

// parseContacts reads {"accepted":[…],"blocked":[…]} (SPEC §2.9).
func parseContacts(data []byte) (*Contacts, error) {
	f, err := members("contacts", data, []string{"accepted", "blocked"}, nil)
	if err != nil {
		return nil, err
	}
	var c Contacts
	for name, dst := range map[string]*[]string{"accepted": &c.Accepted, "blocked": &c.Blocked} {
		if err := json.Unmarshal(f[name], dst); err != nil || *dst == nil {
			return nil, fmt.Errorf("contacts: %s must be an array of primaries", name)
		}
		for _, p := range *dst {
			if !kez.WellFormedPrimary(p) {
				return nil, fmt.Errorf("contacts: %s holds %.80q, not a primary", name, p)
			}
		}
	}
	return &c, nil
}
