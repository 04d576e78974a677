package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/kez"
)

// env is what a command works with: the app's streams, the config dir and
// its parsed flags.
type env struct {
	*app
	dir     string
	fs      *flag.FlagSet
	resolve map[string]string // server name → base URL (--resolve, KEZ_RESOLVE)
}

func (e *env) str(name string) string { return e.fs.Lookup(name).Value.String() }

func (e *env) isSet(name string) bool {
	set := false
	e.fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func (e *env) uint(name string) uint64 {
	return e.fs.Lookup(name).Value.(flag.Getter).Get().(uint64)
}

// newClient makes a client for server, with an identity when keys is set.
// What it learns about the server's log and its users' keys is kept in the
// config dir (trust/), shared by every kez process of this config.
func (e *env) newClient(server string, keys *kez.Keys, handle, serverName string) (*client.Client, error) {
	return e.newClientWith(server, client.Options{Keys: keys, Handle: handle, ServerName: serverName})
}

func (e *env) newClientWith(server string, o client.Options) (*client.Client, error) {
	o.HTTPClient = e.http
	o.Resolve = e.resolve
	o.Trust = newFileTrust(e.dir, strings.TrimRight(server, "/"))
	if o.LogKey == "" {
		if acct, err := loadAccount(e.dir); err == nil && strings.TrimRight(acct.Server, "/") == strings.TrimRight(server, "/") {
			o.LogKey = acct.LogKey
		}
	}
	return client.New(server, o)
}

// accountClient is the client of the registered user, for commands that
// act as them.
func (e *env) accountClient() (*client.Client, *account, error) {
	keys, err := loadKey(e.dir)
	if err != nil {
		return nil, nil, err
	}
	acct, err := loadAccount(e.dir)
	if err != nil {
		return nil, nil, err
	}
	if acct.Primary != keys.Primary() {
		return nil, nil, fmt.Errorf("%s was registered with another key; run: kez register <handle> --server %s", acct.address(), acct.Server)
	}
	old, err := loadOldKeys(e.dir)
	if err != nil {
		return nil, nil, err
	}
	c, err := e.newClientWith(acct.Server, client.Options{Keys: keys, Handle: acct.Handle, ServerName: acct.ServerName, OldKeys: old, LogKey: acct.LogKey})
	return c, acct, err
}

// asUser runs act as the registered user (accountClient), after checking
// the server's log (checkTrust), with ctx bounded by requestTimeout.
func (e *env) asUser(ctx context.Context, act func(ctx context.Context, c *client.Client, acct *account) error) error {
	c, acct, err := e.accountClient()
	if err != nil {
		return err
	}
	e.checkTrust(ctx, c)
	e.deliverQueued(ctx, c)
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	return act(ctx, c, acct)
}

// accountCursor is accountClient plus the account's saved cursor, for the
// commands that read the inbox (inbox, listen, ack). It first asks the
// server for its record of our key: a reset server has forgotten us (an
// error that says so), or holds a binding made anew (by us elsewhere), whose
// seqs started over, so the old cursor must go: listen would skip new
// messages and ack would delete unread ones.
func (e *env) accountCursor(ctx context.Context) (*client.Client, *account, *cursor, error) {
	c, acct, err := e.accountClient()
	if err != nil {
		return nil, nil, nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, requestTimeout)
	rec, err := c.LookupPrimary(lctx, acct.Primary)
	cancel()
	switch {
	case errors.Is(err, client.ErrNotFound):
		// The log may say why: a deletion, or a binding made behind our back.
		e.checkTrust(ctx, c)
		return nil, nil, nil, notOnServer(err, acct)
	case err != nil:
		// Unreachable or unwell: the command itself will say so, or retry.
	case acct.RegisteredAt == 0 || rec.RegisteredAt != acct.RegisteredAt || rec.Handle != acct.Handle:
		if acct.RegisteredAt != 0 {
			fmt.Fprintf(e.stderr, "%s registered this key anew as %s (the server was reset?); reading the inbox from the start\n", acct.Server, rec.Address)
		}
		acct.Handle, acct.RegisteredAt = rec.Handle, rec.RegisteredAt
		if err := saveAccount(e.dir, acct); err != nil {
			return nil, nil, nil, err
		}
		if c, acct, err = e.accountClient(); err != nil { // the handle may have changed
			return nil, nil, nil, err
		}
	}
	cur, err := loadCursor(e.dir, acct)
	if err != nil {
		return nil, nil, nil, err
	}
	e.checkTrust(ctx, c)
	e.deliverQueued(ctx, c)
	return c, acct, cur, nil
}

// notOnServer turns "your own inbox is not found" into advice.
func notOnServer(err error, acct *account) error {
	if errors.Is(err, client.ErrNotFound) {
		return fmt.Errorf("%s is not registered on %s (was the server reset?); run: kez register %s --server %s",
			acct.address(), acct.Server, acct.Handle, acct.Server)
	}
	return err
}

var initCmd = &command{
	name:    "init",
	minArgs: 0, maxArgs: 0,
	args: "[--seed HEX|-] [--force]",
	flags: func(fs *flag.FlagSet) {
		fs.String("seed", "", "import this 32-byte seed (64 hex digits; - reads it from stdin) instead of making a new key")
		fs.Bool("force", false, "replace an existing key")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		keys, err := keysFromSeedFlag(e)
		if err != nil {
			return err
		}
		if err := saveKey(e.dir, keys, e.str("force") == "true"); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "key saved in %s\nprimary: %s\nnext: kez register <handle> --server URL\n", e.dir, keys.Primary())
		return nil
	},
}

func keysFromSeedFlag(e *env) (*kez.Keys, error) {
	seedHex := e.str("seed")
	switch seedHex {
	case "":
		return kez.GenerateKeys(), nil
	case "-":
		b, err := io.ReadAll(io.LimitReader(e.stdin, 1024))
		if err != nil {
			return nil, err
		}
		seedHex = string(b)
	}
	seed, err := hex.DecodeString(strings.TrimSpace(seedHex))
	if err != nil || len(seed) != 32 {
		return nil, errors.New("--seed must be 64 hex digits (a 32-byte Ed25519 seed)")
	}
	return kez.NewKeys(seed)
}

var registerCmd = &command{
	name:    "register",
	minArgs: 1, maxArgs: 1,
	args: "<handle> --server URL",
	flags: func(fs *flag.FlagSet) {
		fs.String("server", "", "the server's base URL, e.g. http://localhost:8080 (default: the one you registered with)")
		fs.String("log-key", "", "the server's log key, if you got it from a source you trust (default: pinned from the server at first contact)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		handle := strings.ToLower(args[0])
		if !kez.ValidHandle(handle) {
			return fmt.Errorf("%q is not a valid handle: use 2-32 of a-z, 0-9, _ and -, starting with a letter or digit", args[0])
		}
		keys, err := loadKey(e.dir)
		if err != nil {
			return err
		}
		server, err := e.serverFlagOrAccount()
		if err != nil {
			return err
		}
		c, err := e.newClientWith(server, client.Options{Keys: keys, Handle: handle, LogKey: e.str("log-key")})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		rec, err := c.Register(ctx, handle)
		switch {
		case errors.Is(err, client.ErrHandleTaken):
			return fmt.Errorf("handle %q is already taken on %s", handle, server)
		case errors.Is(err, client.ErrPrimaryTaken):
			if other, lerr := c.LookupPrimary(ctx, keys.Primary()); lerr == nil {
				return fmt.Errorf("this key is already registered on %s as %s (one handle per key)", server, other.Address)
			}
			return fmt.Errorf("this key is already registered on %s under another handle", server)
		case errors.Is(err, client.ErrStaleTimestamp):
			return fmt.Errorf("the server rejected the registration time; is this computer's clock right? (%v)", err)
		case err != nil:
			return err
		}
		logKey, err := c.PinnedLogKey()
		if err != nil {
			return err
		}
		acct := &account{Server: c.BaseURL(), ServerName: rec.Server, Handle: rec.Handle, Primary: keys.Primary(), RegisteredAt: rec.RegisteredAt, LogKey: logKey}
		if err := saveAccount(e.dir, acct); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "registered %s\nlog key %s (pinned: every checkpoint of this server must be signed by it)\n", rec.Address, logKey)
		return nil
	},
}

// serverFlagOrAccount is --server, else the server of the saved account.
func (e *env) serverFlagOrAccount() (string, error) {
	if s := e.str("server"); s != "" {
		return s, nil
	}
	acct, err := loadAccount(e.dir)
	if errors.Is(err, errNotRegistered) {
		return "", errors.New("which server? pass --server URL, e.g. --server http://localhost:8080")
	}
	if err != nil {
		return "", err
	}
	return acct.Server, nil
}

var whoisCmd = &command{
	name:    "whois",
	minArgs: 1, maxArgs: 1,
	args: "<handle|handle@server> [--server URL]",
	flags: func(fs *flag.FlagSet) {
		fs.String("server", "", "the server to ask (default: the one you registered with)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		server, err := e.serverFlagOrAccount()
		if err != nil {
			return err
		}
		var c *client.Client
		if acct, aerr := loadAccount(e.dir); aerr == nil && strings.TrimRight(acct.Server, "/") == strings.TrimRight(server, "/") {
			if c, _, err = e.accountClient(); err != nil {
				return err
			}
			e.checkTrust(ctx, c)
		} else if c, err = e.newClient(server, nil, "", ""); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		ct, err := c.PeekContact(ctx, args[0])
		if client.IsUnknownUser(err) {
			if _, other := kez.SplitAddress(args[0]); other != "" {
				server = other
			}
			return fmt.Errorf("no user %q on %s", args[0], server)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "address     %s\nprimary     %s\nregistered  %s\n", ct.Address, ct.Primary,
			time.Unix(ct.RegisteredAt, 0).UTC().Format("2006-01-02 15:04:05 UTC"))
		how := "registration"
		if len(ct.Rotation) > 0 {
			how = "rotation"
		}
		logOf := "the pinned log key"
		if ct.Remote {
			logOf = "the log key pinned for " + ct.Server + " (its own server)"
		}
		fmt.Fprintf(e.stdout, "signed      the %s is signed by this key\nlog         entry %d of %d, inclusion proven under %s; it is the handle's latest change\n",
			how, ct.LogIndex, ct.Checkpoint.Size, logOf)
		fmt.Fprintf(e.stdout, "trust       %s\n", pinStatus(ct, c))
		return nil
	},
}

// pinStatus says how far the user can trust a contact's key, and never
// "verified" unless they compared its safety number.
func pinStatus(ct *client.Contact, c *client.Client) string {
	self := c.Keys() != nil && c.Keys().Primary() == ct.Primary
	who := ct.Who()
	switch {
	case self:
		return "this is your own key"
	case ct.Status == client.ContactUnpinned:
		return "not pinned yet: the key is pinned when you first write or read " + who + "; NOT verified (kez verify " + who + ")"
	case ct.Status == client.ContactChanged:
		return fmt.Sprintf("KEY CHANGED from the pinned %s (%s); sending is blocked until you accept it: kez accept-key %s, or compare safety numbers: kez verify %s",
			ct.Pin.Primary, ct.Pin.Changed.How, who, who)
	case ct.Verified():
		return fmt.Sprintf("verified: you compared the safety number of this key on %s", when(ct.Pin.VerifiedAt))
	case ct.Pin.Verified != "":
		return fmt.Sprintf("pinned; you verified an earlier key (%s), and this one came by rotations it signed; the safety number changed: NOT verified (kez verify %s)", ct.Pin.Verified, who)
	}
	return fmt.Sprintf("pinned on first use (%s); NOT verified: compare safety numbers with kez verify %s", when(ct.Pin.PinnedAt), who)
}

// maxText bounds a message so its envelope stays under the server's
// default 256 KiB limit after base64.
const maxText = 180 << 10

var sendCmd = &command{
	name:    "send",
	minArgs: 1, maxArgs: -1,
	args: "<to> [text...]   (text from stdin when not given)",
	run: func(ctx context.Context, e *env, args []string) error {
		to, text := args[0], strings.Join(args[1:], " ")
		if len(args) == 1 {
			b, err := io.ReadAll(io.LimitReader(e.stdin, maxText+1))
			if err != nil {
				return fmt.Errorf("reading the message from stdin: %v", err)
			}
			text = strings.TrimRight(string(b), "\r\n")
		}
		if strings.TrimSpace(text) == "" {
			return errors.New("nothing to send: give the text after the recipient, or on stdin")
		}
		if len(text) > maxText {
			return fmt.Errorf("message is too long (at most %d KiB)", maxText>>10)
		}
		return e.asUser(ctx, func(ctx context.Context, c *client.Client, acct *account) error {
			return e.send(ctx, c, acct, to, text)
		})
	},
}

// send looks to up (at its own server for another server's user), seals
// text to them and delivers it. A message to another server that cannot be
// delivered now (that server unreachable or unwell) is queued in the
// outbox, sealed to the key pinned for them when they cannot even be looked
// up, and delivered later.
func (e *env) send(ctx context.Context, c *client.Client, acct *account, to, text string) error {
	remote := isRemote(to, acct)
	r, err := c.Recipient(ctx, to)
	if err != nil && remote && client.IsTemporary(err) {
		if pinned, perr := c.PinnedRecipient(to); perr == nil {
			r, err = pinned, nil // their server is down: seal to the pinned key, queue below
		}
	}
	var out *client.Outgoing
	if err == nil {
		for _, n := range r.Contact.Notices {
			fmt.Fprintf(e.stderr, "notice: %s\n", n)
		}
		if r.Contact.Status == client.ContactNew {
			fmt.Fprintf(e.stderr, "first message to %s: key %s pinned (compare safety numbers: kez verify %s)\n", r.Address, r.Primary, r.Contact.Who())
		}
		if out, err = c.Seal(ctx, r, text); err == nil {
			_, err = c.Deliver(ctx, out)
		}
	}
	if err != nil && out != nil && remote && client.IsTemporary(err) {
		if qerr := e.queue(out, err); qerr != nil {
			return fmt.Errorf("%s (and the outbox could not keep the message: %v)", describe(err), qerr)
		}
		fmt.Fprintf(e.stdout, "queued for %s: %s; kez delivers it when that server answers (kez outbox shows it)\n", r.Address, oneLine(describe(err)))
		return nil
	}
	_, server := kez.SplitAddress(to)
	if server == "" {
		server = acct.ServerName
	}
	switch {
	case client.IsTrustFailure(err):
		return keyChangedAdvice(err)
	case client.IsUnknownUser(err):
		if st, serr := c.TrustState(); serr == nil && !remote {
			if p := st.Contacts[kez.ASCIILower(strings.TrimSuffix(to, "@"+acct.ServerName))]; p != nil && p.Changed != nil && p.Changed.Primary == "" {
				return fmt.Errorf("%s is gone: %s", to, p.Changed.How)
			}
		}
		return fmt.Errorf("unknown recipient %q on %s", to, server)
	case errors.Is(err, client.ErrEnvelopeTooLarge):
		return errors.New("the server refused the message as too large")
	case errors.Is(err, client.ErrInboxFull):
		return fmt.Errorf("%s's inbox is full; try again later", to)
	case errors.Is(err, client.ErrRequestLimit):
		return fmt.Errorf("%s has not accepted you as a contact yet, and has as many of your (or everyone's) message requests as the server keeps; wait until they read or accept them", r.Address)
	case errors.Is(err, client.ErrBlocked):
		return fmt.Errorf("%s does not accept messages from you", r.Address)
	case errors.Is(err, client.ErrFederationRefused):
		return fmt.Errorf("%s does not take messages from users of %s (%v)", server, acct.ServerName, err)
	case errors.Is(err, client.ErrSenderUnverified):
		return fmt.Errorf("%s could not verify your key at %s, so it refused the message (%v); kez log status shows what your client checked of your own server", server, acct.ServerName, err)
	case errors.Is(err, client.ErrUnknownSender):
		return fmt.Errorf("%s does not know your key (was the server reset?); run: kez register %s --server %s", acct.Server, acct.Handle, acct.Server)
	case err != nil:
		return err
	}
	fmt.Fprintf(e.stdout, "sent to %s\n", r.Address)
	return nil
}

var inboxCmd = &command{
	name:    "inbox",
	minArgs: 0, maxArgs: 0,
	args: "[--since N] [--limit N]",
	flags: func(fs *flag.FlagSet) {
		fs.Uint64("since", 0, "show only messages after this seq")
		fs.Uint64("limit", 0, "page size to ask for (default: the server's)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		c, acct, cur, err := e.accountCursor(ctx)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		p := newPrinter(c, cur)
		p.receiptsAfter = cur.LastSeq // what an earlier run showed had its receipt then
		var requests []string
		shown := 0
		err = e.readInbox(ctx, c, e.uint("since"), int(min(e.uint("limit"), 500)), func(m client.Message) {
			line := p.format(ctx, m, false)
			switch {
			case line == "":
			case m.Request:
				requests = append(requests, line) // shown apart, after the contacts' messages
			default:
				fmt.Fprintln(e.stdout, line)
				shown++
			}
		})
		if err != nil {
			return notOnServer(err, acct)
		}
		sendReceipts(ctx, c, p.takeReceipts(), e.stderr)
		if shown == 0 {
			fmt.Fprintln(e.stdout, "no messages")
		}
		if len(requests) > 0 {
			fmt.Fprintf(e.stdout, "\nmessage requests: %d from senders who are not your contacts (kez accept <who> to let them in, kez block <who> to refuse them)\n", len(requests))
			for _, line := range requests {
				fmt.Fprintln(e.stdout, line)
			}
		}
		if p.lastSeq == 0 {
			return nil
		}
		cur.LastSeq = max(cur.LastSeq, p.lastSeq) // never back
		return cur.save(e.dir)
	},
}

// readInbox calls each with every stored message after since, page by page.
func (e *env) readInbox(ctx context.Context, c *client.Client, since uint64, limit int, each func(client.Message)) error {
	for {
		// A page may end before limit (the server caps its bytes too):
		// only More says whether another follows.
		page, err := c.Inbox(ctx, since, limit)
		if err != nil {
			return err
		}
		for _, m := range page.Messages {
			each(m)
		}
		if !page.More || page.NextSince <= since {
			return nil
		}
		since = page.NextSince
	}
}

var listenCmd = &command{
	name:    "listen",
	minArgs: 0, maxArgs: 0,
	args: "[--since N]",
	flags: func(fs *flag.FlagSet) {
		fs.Uint64("since", 0, "start after this seq (default: after the last message shown)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		c, acct, cur, err := e.accountCursor(ctx)
		if err != nil {
			return err
		}
		since := cur.LastSeq
		if e.isSet("since") {
			since = e.uint("since")
		}
		p := newPrinter(c, cur)
		p.receiptsAfter = cur.LastSeq
		var receipts sync.WaitGroup
		defer receipts.Wait() // Ctrl-C ends them too: they share ctx
		connected, lost := false, false
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go e.watchTrust(watchCtx, c)
		go e.watchOutbox(watchCtx, c)
		err = c.Stream(ctx, client.StreamOptions{
			Since: since,
			OnConnect: func() {
				switch {
				case !connected:
					fmt.Fprintf(e.stderr, "listening as %s on %s (Ctrl-C to stop)\n", acct.address(), acct.Server)
				case lost:
					fmt.Fprintln(e.stderr, "reconnected")
				}
				connected, lost = true, false
			},
			OnDisconnect: func(err error, wait time.Duration) {
				// The server ends streams now and then (reload, and every
				// hour or so: SPEC §2.7); Stream reconnects at once, with
				// nothing lost. Only a failure is news.
				if errors.Is(err, client.ErrStreamEnded) && !lost {
					return
				}
				lost = true
				fmt.Fprintf(e.stderr, "connection lost (%s); retrying in %s\n", oneLine(describe(err)), wait.Round(100*time.Millisecond))
			},
		}, func(m client.Message) error {
			if line := p.format(ctx, m, true); line != "" {
				fmt.Fprintln(e.stdout, line)
			}
			if owed := p.takeReceipts(); owed != nil {
				// Apart from the stream: a contact's slow server never holds up the next message.
				receipts.Go(func() { sendReceipts(ctx, c, owed, e.stderr) })
			}
			cur.LastSeq = m.Seq
			return cur.save(e.dir)
		})
		if ctx.Err() != nil {
			return nil // Ctrl-C is how listening ends
		}
		return notOnServer(err, acct)
	},
}

var ackCmd = &command{
	name:    "ack",
	minArgs: 0, maxArgs: 1,
	args: "[seq]   (default: the last message shown by inbox or listen)",
	run: func(ctx context.Context, e *env, args []string) error {
		c, acct, cur, err := e.accountCursor(ctx)
		if err != nil {
			return err
		}
		upto := cur.LastSeq
		if len(args) == 1 {
			upto, err = strconv.ParseUint(strings.TrimPrefix(args[0], "#"), 10, 64)
			if err != nil {
				return fmt.Errorf("%q is not a message number", args[0])
			}
		}
		if upto == 0 {
			return errors.New("nothing to acknowledge: no message shown yet (run kez inbox or kez listen first)")
		}
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		n, err := c.Ack(ctx, upto)
		if err != nil {
			return notOnServer(err, acct)
		}
		fmt.Fprintf(e.stdout, "deleted %d message(s) up to #%d\n", n, upto)
		return nil
	},
}

var requestsCmd = &command{
	name:    "requests",
	minArgs: 0, maxArgs: 0,
	args: "",
	run: func(ctx context.Context, e *env, args []string) error {
		c, acct, cur, err := e.accountCursor(ctx)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		type sender struct {
			primary, fromAddr, first string
			count                    int
		}
		var order []*sender
		bySender := map[string]*sender{}
		seen := map[string]bool{} // sender|id: a replay counts once
		err = e.readInbox(ctx, c, 0, 0, func(m client.Message) {
			if !m.Request {
				return
			}
			s := bySender[m.From]
			if s == nil {
				s = &sender{primary: m.From, fromAddr: m.FromAddr}
				bySender[m.From] = s
				order = append(order, s)
			}
			got, err := c.Open(m)
			if err == nil {
				if seen[got.From+"|"+got.Plaintext.ID] {
					return
				}
				seen[got.From+"|"+got.Plaintext.ID] = true
			}
			s.count++
			if s.first != "" {
				return
			}
			switch {
			case err != nil:
				s.first = "[" + err.Error() + "]"
			case got.Plaintext.Type == kez.PlaintextText:
				s.first = strconv.Quote(got.Plaintext.Text)
			default:
				s.first = "[unsupported message]"
			}
		})
		if err != nil {
			return notOnServer(err, acct)
		}
		if len(order) == 0 {
			fmt.Fprintln(e.stdout, "no message requests")
			return nil
		}
		p := newPrinter(c, cur)
		for _, s := range order {
			name := p.address(ctx, s.primary, s.fromAddr)
			who := name
			if name == "" {
				name, who = keyName(s.primary), s.primary
			}
			first := safeText(s.first)
			if r := []rune(first); len(r) > 80 {
				first = string(r[:77]) + "…"
			}
			fmt.Fprintf(e.stdout, "%s: %d request(s), first: %s\n    kez accept %s | kez block %s\n", name, s.count, indent(first), who, who)
		}
		return nil
	},
}

// contactCmd is accept, unaccept, block or unblock.
func contactCmd(name, does string, act func(*client.Client, context.Context, string) error) *command {
	return &command{
		name:    name,
		minArgs: 1, maxArgs: 1,
		args: "<handle|handle@server|ed25519:primary>",
		run: func(ctx context.Context, e *env, args []string) error {
			return e.asUser(ctx, func(ctx context.Context, c *client.Client, acct *account) error {
				primary, name, err := resolve(ctx, c, args[0])
				if err != nil {
					return err
				}
				if err := act(c, ctx, primary); err != nil {
					return notOnServer(err, acct)
				}
				fmt.Fprintf(e.stdout, does+"\n", name)
				return nil
			})
		},
	}
}

var (
	acceptCmd = contactCmd("accept", "accepted %s: their messages are no longer requests",
		(*client.Client).Accept)
	unacceptCmd = contactCmd("unaccept", "%s is no longer a contact: their messages are requests again",
		(*client.Client).Unaccept)
	blockCmd = contactCmd("block", "blocked %s: their messages are refused and their requests deleted",
		(*client.Client).Block)
	unblockCmd = contactCmd("unblock", "unblocked %s: their messages are requests again",
		(*client.Client).Unblock)
)

// resolve turns a handle, handle@server or ed25519:primary into a primary
// and a name to show, looking it up on the server (whose record is signed
// by the key it names).
func resolve(ctx context.Context, c *client.Client, who string) (primary, name string, err error) {
	if strings.HasPrefix(who, kez.PrimaryPrefix) {
		if !kez.WellFormedPrimary(who) {
			return "", "", fmt.Errorf("%q is not a primary (ed25519: and 64 lowercase hex digits)", who)
		}
		rec, err := c.LookupPrimary(ctx, who)
		switch {
		case err == nil:
			return who, rec.Address, nil
		case client.IsUnknownUser(err):
			return who, keyName(who), nil // no handle (any more): the key alone will do
		default:
			return "", "", err
		}
	}
	rec, err := c.Lookup(ctx, who)
	if client.IsUnknownUser(err) {
		return "", "", fmt.Errorf("no user %q on %s", who, c.BaseURL())
	}
	if err != nil {
		return "", "", err
	}
	return rec.Primary, rec.Address, nil
}

var contactsCmd = &command{
	name:    "contacts",
	minArgs: 0, maxArgs: 0,
	args: "",
	run: func(ctx context.Context, e *env, args []string) error {
		return e.asUser(ctx, func(ctx context.Context, c *client.Client, acct *account) error {
			lists, err := c.Contacts(ctx)
			if err != nil {
				return notOnServer(err, acct)
			}
			p := newPrinter(c, nil)
			for _, l := range []struct {
				title string
				keys  []string
			}{{"accepted (their messages are not requests)", lists.Accepted}, {"blocked", lists.Blocked}} {
				fmt.Fprintf(e.stdout, "%s: %d\n", l.title, len(l.keys))
				for _, k := range l.keys {
					name := p.address(ctx, k, "")
					if name == "" {
						name = keyName(k)
					}
					fmt.Fprintf(e.stdout, "  %s  %s\n", name, k)
				}
			}
			return nil
		})
	},
}
