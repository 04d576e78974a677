package kez

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// tokenCheckStrictJSON is the first CheckStrictJSON, built on
// encoding/json's tokenizer: slow, but plainly right. The single-pass
// scanner must agree with it on every input (it also refuses invalid UTF-8,
// which every caller refused before calling it).
func tokenCheckStrictJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var walk func(depth int) error
	walk = func(depth int) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch v := tok.(type) {
		case json.Number:
			if f, err := strconv.ParseFloat(string(v), 64); err != nil || math.IsInf(f, 0) {
				return fmt.Errorf("number %.20s is out of range", v)
			}
			return nil
		case json.Delim:
			if depth >= MaxJSONDepth {
				return fmt.Errorf("nested deeper than %d levels", MaxJSONDepth)
			}
			seen := map[string]bool{}
			for dec.More() {
				if v == '{' {
					k, err := dec.Token()
					if err != nil {
						return err
					}
					key := k.(string)
					if seen[key] {
						return fmt.Errorf("duplicate key %q", key)
					}
					seen[key] = true
				}
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
			_, err = dec.Token() // the closing delimiter
			return err
		}
		return nil
	}
	if err := walk(0); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data")
	}
	return nil
}

// strictAgree fails t when the scanner and the reference disagree on data.
func strictAgree(t *testing.T, data []byte) {
	t.Helper()
	got := CheckStrictJSON(data)
	want := tokenCheckStrictJSON(data)
	if want == nil && !utf8.Valid(data) {
		want = errors.New("invalid UTF-8")
	}
	if (got == nil) != (want == nil) {
		t.Fatalf("%q: scanner says %v, reference says %v", data, got, want)
	}
}

var strictCases = []string{
	`{}`, `[]`, `""`, `0`, `-0`, `1.5`, `-1.5e300`, `1E+2`, `1e-400`, `true`, `false`, `null`,
	`{"a":1,"b":{"a":2}}`, `[{"a":1},{"a":2}]`, `{"a":[1,{"b":2}]}`, ` { "a" : [ 1 , 2 ] } `,
	`{"a":1,"a":2}`, `{"x":{"a":1,"a":1}}`, `[{"a":1,"a":2}]`, `{"a":"\u0061","\u0061":1}`, `{"a":1,"\u0061":2}`,
	`{"\ud800":1,"\udc00":2}`, `{"\ud800":1,"\ufffd":2}`, `{"a\/b":1,"a/b":2}`,
	`{"a":1} x`, `{"a":`, `{"a"}`, `{"a":1,}`, `[1,]`, `[,1]`, `{,}`, `{"a":1 "b":2}`, `[1 2]`, `{1:2}`,
	`{"n":1e999999}`, `[-1e400]`, `[1e308]`, `[1.7976931348623157e308]`, `[1.7976931348623159e308]`, `[` + strings.Repeat("9", 308) + `]`, `[` + strings.Repeat("9", 309) + `]`, `[` + strings.Repeat("9", 400) + `]`,
	`01`, `-`, `-a`, `1.`, `.5`, `1e`, `1e+`, `+1`, `0x10`, `NaN`, `Infinity`, `tru`, `nul`, `nulll`, `truex`,
	`"\u00"`, `"\u00zz"`, `"\x"`, `"a` + "\x01" + `"`, `"\t"`, "\"\t\"", `"`, `"\`, `"\"`, `"é"`, "\"\xff\"", "\"\xed\xa0\x80\"",
	"", " ", "\n{}\n", "{}\x00", "\ufeff{}",
	strings.Repeat("[", MaxJSONDepth) + strings.Repeat("]", MaxJSONDepth),
	strings.Repeat("[", MaxJSONDepth+1) + strings.Repeat("]", MaxJSONDepth+1),
	strings.Repeat(`{"a":`, MaxJSONDepth) + "1" + strings.Repeat("}", MaxJSONDepth),
	strings.Repeat(`{"a":`, MaxJSONDepth+1) + "1" + strings.Repeat("}", MaxJSONDepth+1),
}

func TestCheckStrictJSONMatchesReference(t *testing.T) {
	for _, c := range strictCases {
		strictAgree(t, []byte(c))
	}
	// Objects past the small key list, with a repeat early and late.
	var keys []string
	for i := range 40 {
		keys = append(keys, fmt.Sprintf(`"k%d":%d`, i, i))
	}
	strictAgree(t, []byte("{"+strings.Join(keys, ",")+"}"))
	strictAgree(t, []byte("{"+strings.Join(keys, ",")+`,"k3":0}`))
	strictAgree(t, []byte("{"+strings.Join(keys, ",")+`,"k39":0}`))
	strictAgree(t, []byte(`{"k0":0,`+strings.Join(keys[1:], ",")+`,"k0":1}`))
}

func FuzzCheckStrictJSONMatchesReference(f *testing.F) {
	for _, c := range strictCases {
		f.Add([]byte(c))
	}
	f.Fuzz(strictAgree)
}

func TestScanStrictObject(t *testing.T) {
	type member struct {
		key, value string
		compact    bool
	}
	var got []member
	collect := func(k string, v []byte, compact bool) error {
		got = append(got, member{k, string(v), compact})
		return nil
	}
	body := ` {"to" : "alice", "envelope":{"v":1,"ct":"x"} ,"pretty": { "a" : [1, 2] }, "\u0061":[1,[2]]} `
	if err := ScanStrictObject([]byte(body), collect); err != nil {
		t.Fatal(err)
	}
	want := []member{{"to", `"alice"`, true}, {"envelope", `{"v":1,"ct":"x"}`, true},
		{"pretty", `{ "a" : [1, 2] }`, false}, {"a", `[1,[2]]`, true}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("members %v, want %v", got, want)
	}

	// Member values nest up to MaxJSONDepth on their own.
	deep := strings.Repeat("[", MaxJSONDepth) + strings.Repeat("]", MaxJSONDepth)
	if err := ScanStrictObject([]byte(`{"e":`+deep+`}`), collect); err != nil {
		t.Errorf("depth %d in a member: %v", MaxJSONDepth, err)
	}
	for _, bad := range []string{`[]`, `"x"`, `{"a":1,"a":2}`, `{"a":1} {}`, `{"a":[1,]}`, `{"a":{"b":1,"b":1}}`,
		`{"e":[` + deep + `]}`, "{\"a\":\"\xff\"}", `{"a":1e999}`, ``} {
		got = nil
		if err := ScanStrictObject([]byte(bad), collect); err == nil {
			t.Errorf("%q accepted", bad)
		}
		if len(got) != 0 {
			t.Errorf("%q: fn was called before the whole body was checked", bad)
		}
	}
	stop := errors.New("stop")
	calls := 0
	err := ScanStrictObject([]byte(`{"a":1,"b":2}`), func(string, []byte, bool) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Errorf("error from fn: %v after %d calls", err, calls)
	}
}

// Whatever ScanStrictObject accepts is an object CheckStrictJSON accepts
// member by member, and compact values are what json.Compact makes of them.
func FuzzScanStrictObject(f *testing.F) {
	for _, c := range []string{`{}`, `{"to":"a","envelope":{"v":1}}`, `{ "a" : [ 1 ] }`, `{"a":1,"a":1}`, `{"\u0061":1,"a":2}`} {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		err := ScanStrictObject(data, func(key string, value []byte, compact bool) error {
			if e := CheckStrictJSON(value); e != nil {
				t.Fatalf("%q: member %q = %q accepted but alone %v", data, key, value, e)
			}
			var buf bytes.Buffer
			if e := json.Compact(&buf, value); e != nil {
				t.Fatal(e)
			}
			if compact != bytes.Equal(buf.Bytes(), value) {
				t.Fatalf("%q: member %q = %q compact=%v", data, key, value, compact)
			}
			return nil
		})
		if err == nil {
			// The reference counts the outer object as a level.
			if e := tokenCheckStrictJSON(data); e != nil && !strings.Contains(e.Error(), "nested deeper") {
				t.Fatalf("%q accepted, reference says %v", data, e)
			}
		}
	})
}

func BenchmarkCheckStrictJSON(b *testing.B) {
	keys := GenerateKeys()
	link, err := keys.LinkTo(GenerateKeys().Primary())
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{1 << 10, 256 << 10} {
		env, err := link.Seal(bytes.Repeat([]byte("x"), size*3/4))
		if err != nil {
			b.Fatal(err)
		}
		raw := env.AppendJSON(nil)
		for name, check := range map[string]func([]byte) error{"scanner": CheckStrictJSON, "tokens": tokenCheckStrictJSON} {
			b.Run(fmt.Sprintf("%s/%dKiB", name, size>>10), func(b *testing.B) {
				b.SetBytes(int64(len(raw)))
				for b.Loop() {
					if err := check(raw); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
