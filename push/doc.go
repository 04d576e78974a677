// Package push sends the Web Push notifications of SPEC §7: after a message
// is stored, each of the recipient's browsers gets a content-free push,
// {"handle":…,"seq":…}, encrypted for it (RFC 8291) and signed by the
// server's VAPID key (RFC 8292) — both done by webpush-go. What is here is
// the part a hostile subscription could abuse: endpoints are checked
// (endpoint.go), connections go only to public addresses (dial.go), and
// sending is queued, coalesced per device and bounded in time and
// concurrency (sender.go), so a push never delays or fails a send.
package push
