package client

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

type parsed struct {
	events  []sseEvent
	retries []time.Duration
	lines   int
}

// parseAll reads a whole stream, one byte per Read so line ends split
// across reads are exercised too.
func parseAll(t *testing.T, stream string) parsed {
	t.Helper()
	var out parsed
	r := newSSEReader(iotest.OneByteReader(strings.NewReader(stream)))
	r.onLine = func() { out.lines++ }
	r.onRetry = func(d time.Duration) { out.retries = append(out.retries, d) }
	for {
		ev, err := r.next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		ev.Data = append([]byte(nil), ev.Data...) // valid only until next
		out.events = append(out.events, ev)
	}
}

func TestSSEServerShape(t *testing.T) {
	// What SPEC §2.7 has the server write.
	stream := "retry: 3000\n\n" +
		"id: 12\nevent: message\ndata: {\"seq\":12}\n\n" +
		": ping\n\n" +
		"id: 13\nevent: message\ndata: {\"seq\":13}\n\n"
	got := parseAll(t, stream)
	if len(got.retries) != 1 || got.retries[0] != 3*time.Second {
		t.Errorf("retries = %v", got.retries)
	}
	want := []sseEvent{
		{ID: "12", Type: "message", Data: []byte(`{"seq":12}`)},
		{ID: "13", Type: "message", Data: []byte(`{"seq":13}`)},
	}
	assertEvents(t, got.events, want)
	if got.lines != 12 {
		t.Errorf("onLine called %d times, want 12 (comments count)", got.lines)
	}
}

func TestSSELineEndsAndFields(t *testing.T) {
	cases := map[string]struct {
		stream string
		want   []sseEvent
	}{
		"CRLF": {"data: a\r\n\r\n", []sseEvent{{Type: "message", Data: []byte("a")}}},
		"CR":   {"data: a\r\rdata: b\r\r", []sseEvent{{Type: "message", Data: []byte("a")}, {Type: "message", Data: []byte("b")}}},
		"mixed": {"event: x\r\ndata: 1\rdata: 2\n\r\n",
			[]sseEvent{{Type: "x", Data: []byte("1\n2")}}},
		"no space after colon":    {"data:a\n\n", []sseEvent{{Type: "message", Data: []byte("a")}}},
		"only one space stripped": {"data:  a\n\n", []sseEvent{{Type: "message", Data: []byte(" a")}}},
		"bare data field":         {"data\n\n", []sseEvent{{Type: "message", Data: []byte("")}}},
		"colon in value":          {"data: a:b\n\n", []sseEvent{{Type: "message", Data: []byte("a:b")}}},
		"no data, no event":       {"event: x\nid: 4\n\n", nil},
		"type resets":             {"event: x\ndata: 1\n\ndata: 2\n\n", []sseEvent{{Type: "x", Data: []byte("1")}, {Type: "message", Data: []byte("2")}}},
		"id persists":             {"id: 7\ndata: 1\n\ndata: 2\n\n", []sseEvent{{ID: "7", Type: "message", Data: []byte("1")}, {ID: "7", Type: "message", Data: []byte("2")}}},
		"id with NUL ignored":     {"id: 7\nid: 8\x00\ndata: 1\n\n", []sseEvent{{ID: "7", Type: "message", Data: []byte("1")}}},
		"unknown field ignored":   {"foo: bar\ndata: 1\n\n", []sseEvent{{Type: "message", Data: []byte("1")}}},
		"unterminated dropped":    {"data: 1\n\ndata: 2\n", []sseEvent{{Type: "message", Data: []byte("1")}}},
		"unterminated line":       {"data: 1", nil},
		"empty":                   {"", nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) { assertEvents(t, parseAll(t, c.stream).events, c.want) })
	}
}

func TestSSERetry(t *testing.T) {
	got := parseAll(t, "retry: 10\nretry: x\nretry: -5\nretry: 1.5\nretry:\nretry: 250\n\n")
	if len(got.retries) != 2 || got.retries[0] != 10*time.Millisecond || got.retries[1] != 250*time.Millisecond {
		t.Errorf("retries = %v, want [10ms 250ms]", got.retries)
	}
}

func TestSSELongLine(t *testing.T) {
	big := strings.Repeat("x", 300<<10) // longer than an envelope
	r := newSSEReader(strings.NewReader("data: " + big + "\n\n"))
	ev, err := r.next()
	if err != nil || string(ev.Data) != big {
		t.Fatalf("long line: %v, %d bytes", err, len(ev.Data))
	}
}

func TestSSELineLimit(t *testing.T) {
	// A 16 MiB envelope (the server's largest max_envelope) in its message.
	envelope := `{"ct":"` + strings.Repeat("A", 16<<20-8) + `"}`
	msg := `{"seq":1,"envelope":` + envelope + `,"received_at":1764115200123}`
	r := newSSEReader(strings.NewReader("id: 1\nevent: message\ndata: " + msg + "\n\n"))
	if ev, err := r.next(); err != nil || len(ev.Data) != len(msg) {
		t.Fatalf("a 16 MiB envelope: %v, %d bytes", err, len(ev.Data))
	}
	// The longest line allowed, and one byte more.
	exact := "data: " + strings.Repeat("x", maxSSELine-len("data: "))
	if ev, err := newSSEReader(strings.NewReader(exact + "\r\n\r\n")).next(); err != nil || len(ev.Data) != maxSSELine-6 {
		t.Fatalf("a line of maxSSELine bytes: %v, %d bytes", err, len(ev.Data))
	}
	if _, err := newSSEReader(strings.NewReader(exact + "x\n\n")).next(); !errors.Is(err, errSSELineTooLong) {
		t.Fatalf("a line over maxSSELine: %v, want errSSELineTooLong", err)
	}
}

func assertEvents(t *testing.T, got, want []sseEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events %q, want %d %q", len(got), got, len(want), want)
	}
	for i := range got {
		if got[i].ID != want[i].ID || got[i].Type != want[i].Type || string(got[i].Data) != string(want[i].Data) {
			t.Errorf("event %d = %+v (data %q), want %+v (data %q)", i, got[i], got[i].Data, want[i], want[i].Data)
		}
	}
}
