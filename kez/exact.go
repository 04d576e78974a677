package kez

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Go's encoding/json matches member names case-insensitively (and with
// Unicode folding: "ſig" fills "Sig"), while JavaScript matches them
// exactly. An object that one reader understands differently from another
// could show one text in one client and another in the next, so everything
// signed or shown is read with the exact rules below (SPEC §1).

// foldKey maps names that Unicode case folding treats as equal to one key
// ("Text", "TEXT" and "text"; the Kelvin sign and "k"; "ſ" and "s").
// A lower-case ASCII name is its own key, without an allocation.
func foldKey(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || 'A' <= c && c <= 'Z' {
			return strings.ToLower(strings.ToUpper(s))
		}
	}
	return s
}

// ExactMembers checks that data is one strict JSON object (CheckStrictJSON)
// whose member names are all in required or optional, spelled exactly, each
// once, with every required one present. It returns each member's value as
// it appears in data. An unknown member, a duplicate, or one that differs
// from a known name only by case is an error.
func ExactMembers(data []byte, required, optional []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(required)+len(optional))
	err := ScanStrictObject(data, func(key string, value []byte, _ bool) error {
		want, ok := memberName(key, required, optional)
		switch {
		case !ok:
			return fmt.Errorf("unknown member %.40q", key)
		case want != key:
			return fmt.Errorf("member %.40q must be spelled %q", key, want)
		}
		if _, dup := out[key]; dup {
			return fmt.Errorf("duplicate member %q", key) // unreachable: the scan refuses duplicates
		}
		out[key] = value
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, n := range required {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("member %q is missing", n)
		}
	}
	return out, nil
}

// memberName is the known name that key spells, exactly or up to case
// (foldKey), and whether there is one. Names are compared as they are
// first, so that a well-formed object folds nothing.
func memberName(key string, lists ...[]string) (string, bool) {
	for _, names := range lists {
		if slices.Contains(names, key) {
			return key, true
		}
	}
	folded := foldKey(key)
	for _, names := range lists {
		for _, n := range names {
			if foldKey(n) == folded {
				return n, true
			}
		}
	}
	return "", false
}

// EnvelopeHeader is what the server reads of an envelope (SPEC §1, §2.5):
// from and to, and sig as the idempotency key. The rest passes untouched.
type EnvelopeHeader struct {
	From, To string
	Sig      string // "" when the envelope has no string member "sig"
}

// ReadEnvelopeHeader checks that an envelope is a strict JSON object with
// no two member names equal ignoring case, and with exactly-named string
// members "from" and "to", and returns them. Other members are not read.
func ReadEnvelopeHeader(envelope []byte) (EnvelopeHeader, error) {
	var h EnvelopeHeader
	var haveFrom, haveTo bool
	var folded foldedNames
	err := ScanStrictObject(envelope, func(key string, value []byte, _ bool) error {
		if other, dup := folded.add(key); dup {
			return fmt.Errorf("members %.40q and %.40q differ only by case", other, key)
		}
		switch key {
		case "from", "to", "sig":
			if len(value) == 0 || value[0] != '"' {
				return fmt.Errorf("envelope member %q must be a string", key)
			}
			s := jsonStringValue(value)
			switch key {
			case "from":
				h.From, haveFrom = s, true
			case "to":
				h.To, haveTo = s, true
			default:
				h.Sig = s
			}
		}
		return nil
	})
	if err != nil {
		return EnvelopeHeader{}, err
	}
	if !haveFrom || !haveTo {
		return EnvelopeHeader{}, fmt.Errorf(`envelope must have string members "from" and "to"`)
	}
	return h, nil
}

// jsonStringValue decodes a JSON string literal already checked by the
// strict scanner.
func jsonStringValue(lit []byte) string {
	body := lit[1 : len(lit)-1]
	for _, c := range body {
		if c == '\\' {
			return unescapeKey(body)
		}
	}
	return string(body)
}

// foldedNames finds member names equal ignoring case: a list for the few
// members of a usual envelope, a map beyond that, so that an envelope of
// many thousand members costs linear time.
type foldedNames struct {
	small [8]struct{ folded, name string }
	n     int
	big   map[string]string
}

// add records name and returns the earlier name it folds to, if any.
func (f *foldedNames) add(name string) (other string, dup bool) {
	key := foldKey(name)
	if f.big == nil {
		for _, s := range f.small[:f.n] {
			if s.folded == key {
				return s.name, true
			}
		}
		if f.n < len(f.small) {
			f.small[f.n].folded, f.small[f.n].name = key, name
			f.n++
			return "", false
		}
		f.big = make(map[string]string, 2*len(f.small))
		for _, s := range f.small {
			f.big[s.folded] = s.name
		}
	}
	if other, dup := f.big[key]; dup {
		return other, true
	}
	f.big[key] = name
	return "", false
}
