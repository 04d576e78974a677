package client

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// sseEvent is one dispatched Server-Sent Event. Data is valid only until the
// next call to next.
type sseEvent struct {
	ID   string // the stream's last event id when this event was dispatched
	Type string // "message" unless the server named another
	Data []byte
}

// sseReader parses text/event-stream as the WHATWG HTML standard says
// (§9.2.6): CRLF, LF or CR line ends, ':' comments, one optional space after
// the colon, multi-line data, an unterminated last event is dropped.
type sseReader struct {
	lines  *bufio.Scanner
	lastID string
	typ    string
	data   []byte

	// onLine is called for every line, comments included, so a caller can
	// tell a quiet but healthy stream (": ping") from a dead one.
	onLine func()
	// onRetry receives the reconnection time from a "retry:" field.
	onRetry func(time.Duration)
}

// maxSSELine bounds one line: a data line carries a whole envelope, which
// the server caps at 16 MiB (max_envelope), plus the message around it.
const maxSSELine = 16<<20 + 64<<10

// errSSELineTooLong is next's error for a line over maxSSELine. Reading the
// stream again from the same since would meet the same line, so it is not a
// network error to retry.
var errSSELineTooLong = fmt.Errorf("an event line is longer than %d bytes", maxSSELine)

func newSSEReader(r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	// One byte more than the longest line, for its line end.
	sc.Buffer(make([]byte, 0, 4096), maxSSELine+1)
	sc.Split(sseLineSplitter())
	return &sseReader{lines: sc, onLine: func() {}, onRetry: func(time.Duration) {}}
}

// sseLineSplitter returns a bufio.SplitFunc for lines ended by CRLF, LF or
// a lone CR. A CR ends its line at once (an event must not wait for the next
// byte); an LF right after it is then skipped. A long line arrives in many
// reads; each call searches only the bytes that are new since the last, so
// a 16 MiB line costs linear time, not quadratic.
func sseLineSplitter() bufio.SplitFunc {
	afterCR := false
	scanned := 0 // the bytes of data known to hold no line end
	return func(data []byte, atEOF bool) (int, []byte, error) {
		if afterCR && len(data) > 0 {
			afterCR = false
			if data[0] == '\n' {
				return 1, nil, nil
			}
		}
		i := lineEnd(data[scanned:])
		if i < 0 {
			if atEOF && len(data) > 0 {
				scanned = 0
				return len(data), data, nil // a last line without its end; next drops the event
			}
			scanned = len(data) // the Scanner calls again with these bytes and more
			return 0, nil, nil
		}
		i += scanned
		scanned = 0
		afterCR = data[i] == '\r'
		return i + 1, data[:i], nil
	}
}

// lineEnd is the index of the first CR or LF in b, or -1.
func lineEnd(b []byte) int {
	lf := bytes.IndexByte(b, '\n')
	before := b
	if lf >= 0 {
		before = b[:lf]
	}
	if cr := bytes.IndexByte(before, '\r'); cr >= 0 {
		return cr
	}
	return lf
}

// next returns the next event, or the read error (io.EOF when the stream
// ended cleanly).
func (s *sseReader) next() (sseEvent, error) {
	for s.lines.Scan() {
		line := s.lines.Bytes()
		s.onLine()
		if len(line) == 0 {
			if ev, ok := s.dispatch(); ok {
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue // a comment, e.g. the server's ": ping"
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(field) {
		case "event":
			s.typ = string(value)
		case "data":
			s.data = append(s.data, value...)
			s.data = append(s.data, '\n')
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				s.lastID = string(value)
			}
		case "retry":
			if ms, err := strconv.ParseUint(string(value), 10, 31); err == nil && onlyDigits(value) {
				s.onRetry(time.Duration(ms) * time.Millisecond)
			}
		}
	}
	if err := s.lines.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return sseEvent{}, errSSELineTooLong
		}
		return sseEvent{}, err
	}
	return sseEvent{}, io.EOF
}

// dispatch ends an event at a blank line. An event without data is not
// dispatched, as in a browser.
func (s *sseReader) dispatch() (sseEvent, bool) {
	typ := s.typ
	s.typ = ""
	if len(s.data) == 0 {
		return sseEvent{}, false
	}
	data := s.data[:len(s.data)-1] // the last data line's LF
	s.data = s.data[:0]
	if typ == "" {
		typ = "message"
	}
	return sseEvent{ID: s.lastID, Type: typ, Data: data}, true
}

func onlyDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}
