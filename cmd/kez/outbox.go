package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/kez"
)

// The outbox (SPEC §8): a message to another server's user that could not
// be delivered because that server was unreachable or unwell is kept in
// outbox.json, sealed and signed once, and delivered later by any kez
// command that talks to the network as the user (and by kez listen now and
// then), with back-off. Delivering the same envelope again is safe: the
// server stores it once and answers a repeat with the original receipt, so
// a message is never lost and never stored twice. Each attempt is signed
// afresh. A message the server refuses for good (a 4xx) stays, marked
// failed, until kez outbox --drop-failed.
const (
	outboxFile = "outbox.json"
	outboxLock = "outbox.lock"
)

// outboxItem is one queued message.
type outboxItem struct {
	client.Outgoing
	QueuedAt  int64  `json:"queued_at"` // unix seconds
	Attempts  int    `json:"attempts"`
	NextAt    int64  `json:"next_at"` // not tried again by ordinary commands before this
	LastError string `json:"last_error,omitempty"`
	Failed    bool   `json:"failed,omitempty"` // refused for good: never sent again
}

type outboxJSON struct {
	Items []*outboxItem `json:"items"`
}

// backoff is the wait after the n-th failed attempt: 15 s, doubling, at
// most an hour.
func backoff(n int) time.Duration {
	d := 15 * time.Second
	for i := 1; i < n && d < time.Hour; i++ {
		d *= 2
	}
	return min(d, time.Hour)
}

// withOutbox runs fn on the outbox under its lock and saves it if fn
// returns nil (and changed is true).
func (e *env) withOutbox(fn func(ob *outboxJSON) (changed bool, err error)) error {
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return err
	}
	unlock, err := lockFile(filepath.Join(e.dir, outboxLock))
	if err != nil {
		return err
	}
	defer unlock()
	var ob outboxJSON
	if err := readJSON(e.dir, outboxFile, &ob); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	changed, err := fn(&ob)
	if err != nil || !changed {
		return err
	}
	return writeFileAtomic(e.dir, outboxFile, encodeOutbox(&ob), 0o600)
}

// encodeOutbox writes the envelopes byte for byte as they were sealed
// (compact, no HTML escaping, no indentation), so that a resend is the
// very envelope the server may have stored already.
func encodeOutbox(ob *outboxJSON) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(ob) // plain data always encodes
	return b.Bytes()
}

// queue keeps out in the outbox (written to disk before it returns), after
// a first attempt that failed with why.
func (e *env) queue(out *client.Outgoing, why error) error {
	now := time.Now()
	return e.withOutbox(func(ob *outboxJSON) (bool, error) {
		ob.Items = append(ob.Items, &outboxItem{Outgoing: *out, QueuedAt: now.Unix(), Attempts: 1,
			NextAt: now.Add(backoff(1)).Unix(), LastError: oneLine(describe(why))})
		return true, nil
	})
}

// flushOutbox tries to deliver the queued messages: those due (all with
// now), and reports on stderr what went. A delivery that fails for now
// waits longer; one refused for good is marked failed.
func (e *env) flushOutbox(ctx context.Context, c *client.Client, all bool) error {
	return e.withOutbox(func(ob *outboxJSON) (bool, error) {
		changed := false
		kept := ob.Items[:0]
		for _, it := range ob.Items {
			if it.Failed || !all && time.Now().Unix() < it.NextAt || ctx.Err() != nil {
				kept = append(kept, it)
				continue
			}
			changed = true
			dctx, cancel := context.WithTimeout(ctx, requestTimeout)
			_, err := c.Deliver(dctx, &it.Outgoing)
			cancel()
			it.Attempts++
			switch {
			case err == nil:
				fmt.Fprintf(e.stderr, "outbox: delivered your message to %s (queued %s)\n", it.To, when(it.QueuedAt))
				continue
			case ctx.Err() != nil:
				it.Attempts--
			case client.IsTemporary(err):
				it.NextAt = time.Now().Add(backoff(it.Attempts)).Unix()
				it.LastError = oneLine(describe(err))
				fmt.Fprintf(e.stderr, "outbox: your message to %s is still waiting (%s); next try after %s (kez outbox --retry tries now)\n",
					it.To, it.LastError, when(it.NextAt))
			default:
				it.Failed, it.LastError = true, oneLine(describe(err))
				fmt.Fprintf(e.stderr, "outbox: your message to %s was refused and will not be sent again: %s (kez outbox)\n", it.To, it.LastError)
			}
			kept = append(kept, it)
		}
		ob.Items = kept
		return changed, nil
	})
}

// outboxPending reports whether anything waits in the outbox, without
// taking the lock (a hint: flushOutbox decides under it).
func (e *env) outboxPending() bool {
	var ob outboxJSON
	if err := readJSON(e.dir, outboxFile, &ob); err != nil {
		return false
	}
	for _, it := range ob.Items {
		if !it.Failed {
			return true
		}
	}
	return false
}

// deliverQueued flushes the outbox when it holds anything, before a
// command that talks to the network as the user.
func (e *env) deliverQueued(ctx context.Context, c *client.Client) {
	if !e.outboxPending() {
		return
	}
	if err := e.flushOutbox(ctx, c, false); err != nil {
		fmt.Fprintf(e.stderr, "kez: outbox: %v\n", err)
	}
}

// listenOutboxEvery is how often kez listen tries the outbox again (a
// variable for tests).
var listenOutboxEvery = 15 * time.Second

// watchOutbox delivers queued messages while kez listen runs.
func (e *env) watchOutbox(ctx context.Context, c *client.Client) {
	every(ctx, listenOutboxEvery, func() { e.deliverQueued(ctx, c) })
}

var outboxCmd = &command{
	name:    "outbox",
	minArgs: 0, maxArgs: 0,
	args: "[--retry] [--drop-failed]",
	flags: func(fs *flag.FlagSet) {
		fs.Bool("retry", false, "try to deliver every waiting message now")
		fs.Bool("drop-failed", false, "forget the messages the recipient's server refused")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if e.str("retry") == "true" {
			c, _, err := e.accountClient()
			if err != nil {
				return err
			}
			if err := e.flushOutbox(ctx, c, true); err != nil {
				return err
			}
		}
		if e.str("drop-failed") == "true" {
			err := e.withOutbox(func(ob *outboxJSON) (bool, error) {
				kept := ob.Items[:0]
				for _, it := range ob.Items {
					if it.Failed {
						fmt.Fprintf(e.stdout, "dropped the message to %s (queued %s): %s\n", it.To, when(it.QueuedAt), it.LastError)
						continue
					}
					kept = append(kept, it)
				}
				changed := len(kept) != len(ob.Items)
				ob.Items = kept
				return changed, nil
			})
			if err != nil {
				return err
			}
		}
		return e.withOutbox(func(ob *outboxJSON) (bool, error) {
			if len(ob.Items) == 0 {
				fmt.Fprintln(e.stdout, "outbox is empty: every message was delivered")
				return false, nil
			}
			for _, it := range ob.Items {
				state := fmt.Sprintf("waiting, %d attempt(s), next after %s", it.Attempts, when(it.NextAt))
				if it.Failed {
					state = "REFUSED, not sent again (kez outbox --drop-failed forgets it)"
				}
				fmt.Fprintf(e.stdout, "to %s, queued %s: %s\n    last error: %s\n", it.To, when(it.QueuedAt), state, it.LastError)
			}
			return false, nil
		})
	},
}

// isRemote reports whether who ("bob", "bob@server") is a user of another
// server than the account's.
func isRemote(who string, acct *account) bool {
	_, server := kez.SplitAddress(who)
	return server != "" && server != acct.ServerName
}
