package handlers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/kezchat/kez/kez"
)

// parseSendReference is parseSend as it was before it stopped allocating
// for member names, on kez.ExactMembers and kez.ReadEnvelopeHeader: the
// reference the faster parse must agree with, error messages included.
func parseSendReference(data []byte, maxEnvelope int64) (*sendBody, error) {
	members, err := kez.ExactMembers(data, []string{"to", "envelope"}, []string{"from_addr"})
	if err != nil {
		return nil, kez.Errorf(kez.CodeBadRequest, "body must be {\"to\":…, \"envelope\":{…}}: %v", err)
	}
	in := &sendBody{envelope: members["envelope"]}
	for _, name := range []string{"to", "from_addr"} {
		dst := map[string]*string{"to": &in.to, "from_addr": &in.fromAddr}[name]
		if v, ok := members[name]; ok {
			if v[0] != '"' {
				return nil, kez.Errorf(kez.CodeBadRequest, "%q must be a string", name)
			}
			*dst = jsonString(v)
		}
	}
	if in.to == "" {
		return nil, kez.Errorf(kez.CodeBadRequest, "\"to\" is required")
	}
	if in.envelope[0] != '{' {
		return nil, kez.Errorf(kez.CodeBadRequest, "envelope must be a JSON object")
	}
	if int64(len(in.envelope)) > maxEnvelope {
		return nil, kez.Errorf(kez.CodeEnvelopeTooLarge, "envelope is larger than %d bytes", maxEnvelope)
	}
	if in.header, err = kez.ReadEnvelopeHeader(in.envelope); err != nil {
		return nil, kez.Errorf(kez.CodeBadRequest, "envelope: %v", err)
	}
	if bytes.ContainsAny(in.envelope, " \t\r\n") {
		var buf bytes.Buffer
		if err := json.Compact(&buf, in.envelope); err != nil {
			return nil, kez.Errorf(kez.CodeBadRequest, "envelope: %v", err)
		}
		in.envelope = buf.Bytes()
	}
	return in, nil
}

func sameParse(t *testing.T, data []byte) {
	t.Helper()
	got, gotErr := parseSend(data, 256)
	want, wantErr := parseSendReference(data, 256)
	if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
		t.Fatalf("%q:\n got error %v\nwant error %v", data, gotErr, wantErr)
	}
	if gotErr != nil {
		return
	}
	if got.to != want.to || got.fromAddr != want.fromAddr || got.header != want.header || !bytes.Equal(got.envelope, want.envelope) {
		t.Fatalf("%q:\n got %+v\nwant %+v", data, got, want)
	}
}

var sendParseSeeds = []string{
	`{"to":"bob","envelope":{"from":"ed25519:aa","to":"ed25519:bb","sig":"s","ct":"x"}}`,
	`{"to":"bob@kez.test","from_addr":"alice@kez.test","envelope":{"from":"a","to":"b"}}`,
	`{ "to" : "bob" , "envelope" : { "from" : "a" , "to" : "b" , "n" : [1, 2, {"x": " y "}] } }`,
	`{"envelope":{"to":"b","from":"a"},"to":"bob"}`,
	`{"To":"bob","envelope":{"from":"a","to":"b"}}`,
	`{"to":"bob","ENVELOPE":{"from":"a","to":"b"}}`,
	`{"to":"bob","envelope":{"from":"a","to":"b"},"From_Addr":"x"}`,
	`{"to":"bob","envelope":{"from":"a","to":"b"},"extra":1}`,
	`{"to":"bob","envelope":{"from":"a","to":"b"},"ſ":1}`,
	`{"to":"bob","envelope":{"from":"a","to":"b"},"from_addrſ":1}`,
	`{"tο":"bob","envelope":{"from":"a","to":"b"}}`, // Greek omicron
	`{"\u0074o":"bob","envelope":{"from":"a","to":"b"}}`,
	`{"to":"bob"}`,
	`{"envelope":{"from":"a","to":"b"}}`,
	`{"to":"","envelope":{"from":"a","to":"b"}}`,
	`{"to":1,"envelope":{"from":"a","to":"b"}}`,
	`{"to":"bob","from_addr":null,"envelope":{"from":"a","to":"b"}}`,
	`{"to":"bob","envelope":[1]}`,
	`{"to":"bob","envelope":"x"}`,
	`{"to":"b\u006fb","envelope":{"from":"a","to":"b"}}`,
	`{"to":"bob","to":"carol","envelope":{"from":"a","to":"b"}}`,
	`{"to":"bob","envelope":{"from":"a","to":"b","From":"c"}}`,
	`{"to":"bob","envelope":{"from":"a","to":"b","ſig":"c","sig":"d"}}`,
	`{"to":"bob","envelope":{"from":"a","to":"b","\u212aey":"c","key":"d"}}`, // Kelvin sign
	`{"to":"bob","envelope":{"from":"a","to":"b","ıd":"c","id":"d"}}`,        // dotless i
	`{"to":"bob","envelope":{"from":"a","to":"b","a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"I":9,"i":10}}`,
	`{"to":"bob","envelope":{"from":"a"}}`,
	`{"to":"bob","envelope":{"from":1,"to":"b"}}`,
	`{"to":"bob","envelope":{"from":"a","to":"b","sig":2}}`,
	`{"to":"bob","envelope":{"from":"\u0061","to":"b\n"}}`,
	`{"to":"bob","envelope":{"from":"a","to":"b","x":"` + string(bytes.Repeat([]byte("y"), 300)) + `"}}`,
	`{"to":"bob","envelope":{"from":"a","to":"b"}} x`,
	`[]`,
	``,
	`{"to":"bob","envelope":{"from":"a","to":"b"},}`,
}

func TestParseSendMatchesReference(t *testing.T) {
	for _, s := range sendParseSeeds {
		sameParse(t, []byte(s))
	}
}

func FuzzParseSend(f *testing.F) {
	for _, s := range sendParseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { sameParse(t, data) })
}
