package bolt

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/kezchat/kez/storage"
)

// A stored message value (schema 2) is
//
//	received_at  8 bytes, big-endian unix milliseconds
//	flags        1 byte: flagV2 | flagRequest? | flagNoFrom?
//	from         32 bytes: the sender's raw Ed25519 key (zero with flagNoFrom)
//	len(addr)    uvarint
//	from_addr    len(addr) bytes
//	envelope     the rest: compact JSON, as received
//
// Schema 1 values were received_at followed directly by the envelope, whose
// first byte is always '{' (0x7b); flagV2 (0x80) tells the two apart, so a
// value says which layout it has and the migration can be resumed anywhere.
const (
	flagV2      = 0x80
	flagRequest = 0x01 // the sender is a stranger and has not been accepted since
	flagNoFrom  = 0x02 // migrated from schema 1 without a readable envelope.from
	headerMin   = 8 + 1 + keyLen
)

// keyLen is the size of a packed primary: the raw Ed25519 public key.
const keyLen = 32

// primaryPrefix is the only algorithm a primary has (SPEC §1).
const primaryPrefix = "ed25519:"

// errMalformedPrimary is returned for a primary that is not "ed25519:" and
// 64 lowercase hex digits; the handlers check that before they call us.
var errMalformedPrimary = errors.New("malformed primary")

// packPrimary turns "ed25519:<64 lowercase hex>" into its 32 raw bytes.
func packPrimary(p string) ([keyLen]byte, error) {
	var k [keyLen]byte
	h, ok := strings.CutPrefix(p, primaryPrefix)
	if !ok || len(h) != 2*keyLen {
		return k, fmt.Errorf("%w: %q", errMalformedPrimary, p)
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return k, fmt.Errorf("%w: %q", errMalformedPrimary, p)
		}
	}
	if _, err := hex.Decode(k[:], []byte(h)); err != nil {
		return k, fmt.Errorf("%w: %q", errMalformedPrimary, p)
	}
	return k, nil
}

// unpackPrimary is the inverse of packPrimary. Lowercase hex keeps the order
// of the raw bytes, so keys read in bucket order come out sorted.
func unpackPrimary(k []byte) string {
	b := make([]byte, len(primaryPrefix)+2*len(k))
	copy(b, primaryPrefix)
	hex.Encode(b[len(primaryPrefix):], k)
	return string(b)
}

// encodeMessage builds a schema 2 message value.
func encodeMessage(receivedAt int64, flags byte, from []byte, fromAddr string, envelope []byte) []byte {
	val := make([]byte, headerMin, headerMin+binary.MaxVarintLen64+len(fromAddr)+len(envelope))
	binary.BigEndian.PutUint64(val, uint64(receivedAt))
	val[8] = flagV2 | flags
	copy(val[9:], from)
	val = binary.AppendUvarint(val, uint64(len(fromAddr)))
	val = append(val, fromAddr...)
	return append(val, envelope...)
}

// header is what a message value says besides its envelope.
type header struct {
	receivedAt int64
	flags      byte // without flagV2
	from       []byte
	fromAddr   []byte
	envelope   []byte // the rest of the value (aliases it)
}

func (h header) request() bool { return h.flags&flagRequest != 0 }

// decodeMessage splits a message value. The slices alias v.
func decodeMessage(v []byte) (header, error) {
	if len(v) < 9 {
		return header{}, errors.New("message value too short")
	}
	h := header{receivedAt: int64(binary.BigEndian.Uint64(v))}
	if v[8]&flagV2 == 0 { // schema 1: the envelope follows at once
		h.flags = flagNoFrom
		h.envelope = v[8:]
		return h, nil
	}
	if len(v) < headerMin {
		return header{}, errors.New("message value too short")
	}
	h.flags = v[8] &^ flagV2
	h.from = v[9:headerMin]
	n, size := binary.Uvarint(v[headerMin:])
	if size <= 0 || uint64(len(v)-headerMin-size) < n {
		return header{}, errors.New("message value: bad from_addr length")
	}
	start := headerMin + size
	h.fromAddr = v[start : start+int(n)]
	h.envelope = v[start+int(n):]
	return h, nil
}

// message turns a decoded value into a storage.Message, copying what it
// keeps: bolt's bytes die with the transaction.
func (h header) message(seq uint64) storage.Message {
	m := storage.Message{
		Seq:        seq,
		ReceivedAt: h.receivedAt,
		FromAddr:   string(h.fromAddr),
		Request:    h.request(),
		Envelope:   append([]byte(nil), h.envelope...),
	}
	if h.flags&flagNoFrom == 0 {
		m.From = unpackPrimary(h.from)
	}
	return m
}
