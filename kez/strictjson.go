package kez

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// MaxJSONDepth is how deeply objects and arrays may nest in what the server
// accepts: a v1 envelope or registration needs 2.
const MaxJSONDepth = 32

// CheckStrictJSON rejects JSON that parsers disagree on or choke on: an object
// that repeats a key (which copy would a signature cover?), nesting deeper
// than MaxJSONDepth, numbers that are not finite doubles (1e999999 breaks
// decoders in both Go and JavaScript clients), and strings that are not
// valid UTF-8. It reads data once, without building tokens: it is on the
// path of every send.
func CheckStrictJSON(data []byte) error {
	s := strictScanner{data: data}
	s.skipSpace()
	if err := s.value(0); err != nil {
		return err
	}
	return s.end()
}

// ScanStrictObject checks that data is one JSON object that passes
// CheckStrictJSON, with each member's value measured as a document of its
// own (its nesting starts at 0), and calls fn with every member once the
// whole of data has been checked: its key, its value as it appears in data,
// and whether that value is compact (no whitespace between its tokens).
// An error from fn ends the walk and is returned.
func ScanStrictObject(data []byte, fn func(key string, value []byte, compact bool) error) error {
	type member struct {
		key     string
		value   []byte
		compact bool
	}
	var small [8]member
	members := small[:0]
	s := strictScanner{data: data}
	s.skipSpace()
	if s.peek() != '{' {
		return errors.New("not a JSON object")
	}
	err := s.members(func(key []byte, escaped bool) error {
		s.spaced = false
		start := s.pos
		if err := s.value(0); err != nil {
			return err
		}
		k := string(key)
		if escaped {
			k = unescapeKey(key)
		}
		members = append(members, member{k, data[start:s.pos], !s.spaced})
		return nil
	})
	if err == nil {
		err = s.end()
	}
	if err != nil {
		return err
	}
	for _, m := range members {
		if err := fn(m.key, m.value, m.compact); err != nil {
			return err
		}
	}
	return nil
}

// strictScanner is a single-pass JSON checker (RFC 8259) with the rules of
// CheckStrictJSON.
type strictScanner struct {
	data   []byte
	pos    int
	spaced bool // whitespace was skipped since this was last reset
}

func (s *strictScanner) peek() byte {
	if s.pos < len(s.data) {
		return s.data[s.pos]
	}
	return 0
}

func (s *strictScanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
			s.spaced = true
		default:
			return
		}
	}
}

func (s *strictScanner) errorf(format string, args ...any) error {
	return fmt.Errorf("offset %d: %s", s.pos, fmt.Sprintf(format, args...))
}

// end accepts only whitespace after the value.
func (s *strictScanner) end() error {
	s.skipSpace()
	if s.pos != len(s.data) {
		return errors.New("trailing data")
	}
	return nil
}

func (s *strictScanner) value(depth int) error {
	switch c := s.peek(); {
	case c == '{' || c == '[':
		if depth >= MaxJSONDepth {
			return fmt.Errorf("nested deeper than %d levels", MaxJSONDepth)
		}
		if c == '[' {
			return s.array(depth)
		}
		return s.members(func([]byte, bool) error { return s.value(depth + 1) })
	case c == '"':
		_, _, err := s.str()
		return err
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	case s.pos >= len(s.data):
		return s.errorf("unexpected end of JSON")
	default:
		return s.errorf("invalid character %q looking for a value", c)
	}
}

func (s *strictScanner) array(depth int) error {
	s.pos++ // [
	s.skipSpace()
	if s.peek() == ']' {
		s.pos++
		return nil
	}
	for {
		if err := s.value(depth + 1); err != nil {
			return err
		}
		if done, err := s.after(']'); done || err != nil {
			return err
		}
	}
}

// after reads what follows an element of an array or object: a comma
// (another element follows) or the closing bracket (done).
func (s *strictScanner) after(closing byte) (done bool, err error) {
	s.skipSpace()
	switch s.peek() {
	case ',':
		s.pos++
		s.skipSpace()
		return false, nil
	case closing:
		s.pos++
		return true, nil
	}
	return false, s.errorf("expected , or %c", closing)
}

// members reads an object whose '{' is at pos, refusing repeated keys; for
// each member it calls value with the scanner at the member's value, which
// value must read.
func (s *strictScanner) members(value func(key []byte, escaped bool) error) error {
	s.pos++ // {
	s.skipSpace()
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	var seen keySet
	for {
		if s.peek() != '"' {
			return s.errorf("expected a string key in an object")
		}
		key, escaped, err := s.str()
		if err != nil {
			return err
		}
		if !seen.add(key, escaped) {
			return fmt.Errorf("duplicate key %q", seen.last)
		}
		s.skipSpace()
		if s.peek() != ':' {
			return s.errorf("expected : after an object key")
		}
		s.pos++
		s.skipSpace()
		if err := value(key, escaped); err != nil {
			return err
		}
		if done, err := s.after('}'); done || err != nil {
			return err
		}
	}
}

// keySet finds repeated keys: a list for the few keys of usual objects, a
// map beyond that. Keys are compared as decoded strings, so "a" and "\u0061"
// are the same key.
type keySet struct {
	small [8]string
	n     int
	big   map[string]struct{}
	last  string
}

func (k *keySet) add(raw []byte, escaped bool) bool {
	key := string(raw)
	if escaped {
		key = unescapeKey(raw)
	}
	k.last = key
	if k.big == nil {
		for _, have := range k.small[:k.n] {
			if have == key {
				return false
			}
		}
		if k.n < len(k.small) {
			k.small[k.n] = key
			k.n++
			return true
		}
		k.big = make(map[string]struct{}, 2*len(k.small))
		for _, have := range k.small {
			k.big[have] = struct{}{}
		}
	}
	if _, dup := k.big[key]; dup {
		return false
	}
	k.big[key] = struct{}{}
	return true
}

// unescapeKey decodes a checked string body with escapes the way
// encoding/json does (a lone surrogate becomes U+FFFD).
func unescapeKey(raw []byte) string {
	quoted := make([]byte, 0, len(raw)+2)
	quoted = append(append(append(quoted, '"'), raw...), '"')
	var out string
	_ = json.Unmarshal(quoted, &out) // raw was checked by str
	return out
}

// plainByte marks the bytes a string may hold as they are: printable ASCII
// other than '"' and '\'.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str reads a string whose '"' is at pos and returns its body (between the
// quotes) and whether it holds escapes.
func (s *strictScanner) str() (body []byte, escaped bool, err error) {
	s.pos++ // "
	start := s.pos
	data := s.data
	for i := s.pos; i < len(data); {
		c := data[i]
		if plainByte[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			s.pos = i + 1
			return data[start:i], escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(data) {
				s.pos = i
				return nil, false, s.errorf("unexpected end of JSON in a string")
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) || !isHex4(data[i+2:i+6]) {
					s.pos = i
					return nil, false, s.errorf("invalid \\u escape in a string")
				}
				i += 6
			default:
				s.pos = i
				return nil, false, s.errorf("invalid escape in a string")
			}
		case c < 0x20:
			s.pos = i
			return nil, false, s.errorf("control character in a string")
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				s.pos = i
				return nil, false, s.errorf("invalid UTF-8 in a string")
			}
			i += size
		}
	}
	s.pos = len(data)
	return nil, false, s.errorf("unexpected end of JSON in a string")
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func (s *strictScanner) literal(word string) error {
	if len(s.data)-s.pos < len(word) || string(s.data[s.pos:s.pos+len(word)]) != word {
		return s.errorf("invalid literal, expected %s", word)
	}
	s.pos += len(word)
	return nil
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? and refuses
// values beyond the range of a double.
func (s *strictScanner) number() error {
	start := s.pos
	data := s.data
	i := s.pos
	if i < len(data) && data[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(data) && '0' <= data[i] && data[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case digits() == 0:
		s.pos = i
		return s.errorf("invalid number")
	}
	simple := i-start <= 300 // an integer short of 309 digits is always finite
	if i < len(data) && data[i] == '.' {
		i++
		simple = false
		if digits() == 0 {
			s.pos = i
			return s.errorf("invalid number: no digits after the decimal point")
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		simple = false
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if digits() == 0 {
			s.pos = i
			return s.errorf("invalid number: no digits in the exponent")
		}
	}
	s.pos = i
	if !simple {
		lit := string(data[start:i])
		if f, err := strconv.ParseFloat(lit, 64); err != nil || math.IsInf(f, 0) {
			return fmt.Errorf("number %.20s is out of range", lit)
		}
	}
	return nil
}
