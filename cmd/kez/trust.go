package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/kez"
)

// Trust in the terminal (SPEC §5, §6): every account command first checks
// the server's log (kez log status shows what is kept), prints what the
// user must know (a fork, kept warnings, contacts' rotations), and the
// commands below verify, accept, rotate, delete and read the log.

// checkTrust runs the monitor of the user's own account and prints, on
// stderr: a fork (every time until kez log reset), kept warnings (until
// kez log dismiss) and contacts' rotations (once). It never fails the
// command: what needs the log refuses on its own.
func (e *env) checkTrust(ctx context.Context, c *client.Client) { e.reportTrust(ctx, c, nil) }

// listenMonitorEvery is how often kez listen reads the log again.
const listenMonitorEvery = 5 * time.Minute

// watchTrust runs the monitor every listenMonitorEvery until ctx ends,
// printing only what it has not printed in this run.
func (e *env) watchTrust(ctx context.Context, c *client.Client) {
	seen := map[string]bool{}
	if st, err := c.TrustState(); err == nil {
		for _, w := range st.Warnings {
			seen[w.Text] = true // printed when listen started
		}
	}
	every(ctx, listenMonitorEvery, func() { e.reportTrust(ctx, c, seen) })
}

// every runs fn every d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// reportTrust is checkTrust; with seen, a warning or fork already printed
// (its text in seen) is not printed again.
func (e *env) reportTrust(ctx context.Context, c *client.Client, seen map[string]bool) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	_, err := c.Monitor(ctx)
	var fe *client.ForkError
	switch {
	case errors.As(err, &fe):
		if seen == nil || !seen[fe.Error()] {
			fmt.Fprintf(e.stderr, "kez: WARNING: %s\n", oneLine(fe.Error()))
		}
		if seen != nil {
			seen[fe.Error()] = true
		}
	case err != nil && client.IsTrustFailure(err):
		// Kept as a warning, printed below.
	case err != nil && !errors.As(err, new(*client.NetworkError)):
		// An unreachable server is the command's own error to report.
		fmt.Fprintf(e.stderr, "kez: could not check the server's log: %s\n", oneLine(describe(err)))
	}
	e.printWarnings(c, seen)
	e.printNotices(c)
}

// printWarnings prints the kept warnings (those not in seen, when given).
func (e *env) printWarnings(c *client.Client, seen map[string]bool) {
	st, err := c.TrustState()
	if err != nil {
		fmt.Fprintf(e.stderr, "kez: %v\n", err)
		return
	}
	for _, w := range st.Warnings {
		if seen != nil {
			if seen[w.Text] {
				continue
			}
			seen[w.Text] = true
		}
		fmt.Fprintf(e.stderr, "kez: warning: %s (seen %s; kez log dismiss hides it)\n", oneLine(w.Text), when(w.SeenAt))
	}
	// Other servers' findings (SPEC §8): a fork every time, until reset.
	for _, server := range slices.Sorted(maps.Keys(st.Remotes)) {
		r := st.Remotes[server]
		var lines []string
		if r.Fork != nil {
			lines = append(lines, "WARNING: "+oneLine((&client.ForkError{Fork: r.Fork, Server: server}).Error()))
		}
		for _, w := range r.Warnings {
			lines = append(lines, fmt.Sprintf("warning about %s: %s (seen %s; kez log dismiss hides it)", server, oneLine(w.Text), when(w.SeenAt)))
		}
		for _, line := range lines {
			if seen != nil {
				if seen[line] {
					continue
				}
				seen[line] = true
			}
			fmt.Fprintf(e.stderr, "kez: %s\n", line)
		}
	}
}

// printNotices prints contacts' rotations not shown yet.
func (e *env) printNotices(c *client.Client) {
	notices, err := c.TakeNotices()
	if err != nil {
		return
	}
	for _, n := range notices {
		fmt.Fprintf(e.stderr, "notice: %s\n", n)
	}
}

func when(unix int64) string { return time.Unix(unix, 0).UTC().Format("2006-01-02 15:04 UTC") }

// keyChangedAdvice words a blocked contact for the terminal.
func keyChangedAdvice(err error) error {
	var kc *client.KeyChangedError
	if !errors.As(err, &kc) {
		return err
	}
	if kc.New == "" {
		return fmt.Errorf("%s's key %s is no longer bound (%s)", kc.Handle, kc.Pinned, kc.How)
	}
	if kc.Verified {
		return fmt.Errorf("%s's key changed from %s to %s (%s). You had verified the old key: nothing is sent to the new one until you compare the new safety number: kez verify %s",
			kc.Handle, kc.Pinned, kc.New, kc.How, kc.Handle)
	}
	return fmt.Errorf("%s's key changed from %s to %s (%s). This is not a rotation signed by the key you had: it may be a new person using the name, or the server. Nothing is sent to the new key until you accept it: kez accept-key %s (better: kez verify %s)",
		kc.Handle, kc.Pinned, kc.New, kc.How, kc.Handle, kc.Handle)
}

// contact is c.Contact(who), with an unknown user named as such.
func contact(ctx context.Context, c *client.Client, acct *account, who string) (*client.Contact, error) {
	ct, err := c.Contact(ctx, who)
	if client.IsUnknownUser(err) {
		server := acct.Server
		if isRemote(who, acct) {
			_, server = kez.SplitAddress(who)
		}
		return nil, fmt.Errorf("no user %q on %s", who, server)
	}
	return ct, err
}

var verifyCmd = &command{
	name:    "verify",
	minArgs: 1, maxArgs: 1,
	args: "<handle|handle@server> [--yes]",
	flags: func(fs *flag.FlagSet) {
		fs.Bool("yes", false, "the numbers match: mark the contact verified")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		return e.asUser(ctx, func(ctx context.Context, c *client.Client, acct *account) error {
			ct, err := contact(ctx, c, acct, args[0])
			if err != nil {
				return err
			}
			if ct.Primary == c.Keys().Primary() {
				return errors.New("that is you")
			}
			number, err := c.SafetyNumber(ct.Primary)
			if err != nil {
				return err
			}
			g := kez.SafetyGroups(number)
			if ct.Status == client.ContactChanged {
				fmt.Fprintf(e.stdout, "%s's key CHANGED (%s); this is the number for the new key.\n", ct.Address, ct.Pin.Changed.How)
			}
			fmt.Fprintf(e.stdout, "safety number of you (%s) and %s (%s):\n\n    %s\n    %s\n    %s\n\n",
				acct.address(), ct.Address, ct.Primary, strings.Join(g[0:4], " "), strings.Join(g[4:8], " "), strings.Join(g[8:12], " "))
			confirmed := e.str("yes") == "true"
			if !confirmed && isTerminal(e.stdin) {
				fmt.Fprintf(e.stdout, "Does %s see the same 60 digits (compare in person or on a call you trust)? [y/N] ", ct.Who())
				line, _ := bufio.NewReader(e.stdin).ReadString('\n')
				confirmed = strings.EqualFold(strings.TrimSpace(line), "y") || strings.EqualFold(strings.TrimSpace(line), "yes")
			}
			if !confirmed {
				if ct.Verified() {
					fmt.Fprintf(e.stdout, "%s is verified (you compared this number on %s)\n", ct.Address, when(ct.Pin.VerifiedAt))
					return nil
				}
				mine := acct.Handle
				if ct.Remote {
					mine = acct.address() // they are on another server
				}
				fmt.Fprintf(e.stdout, "not marked verified. Compare it with %s's (kez verify %s on their side, in person or on a call you trust); if it matches: kez verify %s --yes\n",
					ct.Who(), mine, args[0])
				return nil
			}
			if _, err := c.MarkVerified(ct.Who(), ct.Primary); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s is verified: key %s\n", ct.Address, ct.Primary)
			return nil
		})
	},
}

// isTerminal reports whether r is an interactive terminal.
func isTerminal(r any) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}

var acceptKeyCmd = &command{
	name:    "accept-key",
	minArgs: 1, maxArgs: 1,
	args: "<handle|handle@server>",
	run: func(ctx context.Context, e *env, args []string) error {
		return e.asUser(ctx, func(ctx context.Context, c *client.Client, acct *account) error {
			ct, err := contact(ctx, c, acct, args[0])
			if err != nil {
				return err
			}
			if ct.Status != client.ContactChanged {
				return fmt.Errorf("%s's key has not changed (%s); nothing to accept", ct.Address, ct.Primary)
			}
			pin, err := c.AcceptKey(ct.Who())
			if err != nil {
				return keyChangedAdvice(err)
			}
			fmt.Fprintf(e.stdout, "accepted %s's new key %s; messages to %s go to it (not verified: kez verify %s)\n", ct.Address, pin.Primary, ct.Who(), ct.Who())
			return nil
		})
	},
}

var rotateCmd = &command{
	name:    "rotate",
	minArgs: 0, maxArgs: 0,
	args: "[--forget-old]",
	flags: func(fs *flag.FlagSet) {
		fs.Bool("forget-old", false, "delete the keys replaced by earlier rotations (messages sealed to them can no longer be read)")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		if e.str("forget-old") == "true" {
			err := os.Remove(filepath.Join(e.dir, oldKeysFile))
			if errors.Is(err, fs.ErrNotExist) {
				fmt.Fprintln(e.stdout, "no old keys kept")
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, "old keys deleted: messages sealed to them can no longer be read")
			return nil
		}
		return e.asUser(ctx, func(ctx context.Context, c *client.Client, acct *account) error {
			// The new key is saved before the server is asked: a lost answer
			// is finished by running kez rotate again, with the same key.
			next, err := loadKeyFile(e.dir, nextKeyFile)
			if errors.Is(err, errNoKey) {
				next = kez.GenerateKeys()
				if err := saveKeyFile(e.dir, nextKeyFile, next); err != nil {
					return err
				}
			} else if err != nil {
				return err
			}
			old := c.Keys()
			rec, err := c.Rotate(ctx, next)
			if errors.Is(err, client.ErrNotFound) {
				// Done by an earlier run whose answer was lost?
				if got, lerr := c.Lookup(ctx, acct.Handle); lerr == nil && got.Primary == next.Primary() {
					rec, err = got, nil
				}
			}
			switch {
			case errors.Is(err, client.ErrPrimaryTaken):
				_ = os.Remove(filepath.Join(e.dir, nextKeyFile))
				return errors.New("the new key is already bound on the server (run kez rotate again for another)")
			case err != nil:
				return err
			}
			olds, err := loadOldKeys(e.dir)
			if err != nil {
				return err
			}
			if err := saveOldKeys(e.dir, append(olds, old)); err != nil {
				return err
			}
			if err := saveKey(e.dir, next, true); err != nil {
				return err
			}
			acct.Primary = next.Primary()
			if err := saveAccount(e.dir, acct); err != nil {
				return err
			}
			_ = os.Remove(filepath.Join(e.dir, nextKeyFile))
			fmt.Fprintf(e.stdout, "rotated %s to the new key %s (log entry %d), signed by the old key and the new one.\n"+
				"Contacts who pinned your old key follow the rotation, with a notice; the safety numbers they verified change.\n"+
				"Your old key is kept in %s to read messages sealed to it before now; when you have read them: kez rotate --forget-old\n",
				rec.Address, rec.Primary, rec.LogIndex, filepath.Join(e.dir, oldKeysFile))
			return nil
		})
	},
}

func loadKeyFile(dir, name string) (*kez.Keys, error) {
	if _, err := os.Stat(filepath.Join(dir, name)); errors.Is(err, fs.ErrNotExist) {
		return nil, errNoKey
	}
	return loadKeyAt(filepath.Join(dir, name))
}

func saveKeyFile(dir, name string, keys *kez.Keys) error {
	return writeKeyAt(dir, name, keys)
}

var deleteCmd = &command{
	name:    "delete",
	minArgs: 0, maxArgs: 0,
	args: "--yes",
	flags: func(fs *flag.FlagSet) {
		fs.Bool("yes", false, "really delete the account")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		c, acct, err := e.accountClient()
		if err != nil {
			return err
		}
		if e.str("yes") != "true" {
			return fmt.Errorf("this deletes %s on %s for good: the inbox and your contact lists on the server are deleted at once, "+
				"lookups of %s answer \"not found\", and nobody (you included) can register %s again until the server's cooldown ends (30 days unless its operator chose otherwise). "+
				"The deletion is signed by your key and published in the server's log; contacts who pinned your key see it. Your key stays in %s. "+
				"To do it: kez delete --yes", acct.address(), acct.Server, acct.Handle, acct.Handle, e.dir)
		}
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		d, err := c.DeleteAccount(ctx)
		if err != nil {
			return notOnServer(err, acct)
		}
		for _, name := range []string{accountFile, cursorFile} {
			if err := os.Remove(filepath.Join(e.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		fmt.Fprintf(e.stdout, "deleted %s (log entry %d). Your key is still in %s.\n", acct.address(), d.LogIndex, e.dir)
		return nil
	},
}

var logCmd = &command{
	name:    "log",
	minArgs: 1, maxArgs: 2,
	args: "verify | handle <h> | status | dismiss | reset --yes   [--server URL | --remote NAME]",
	flags: func(fs *flag.FlagSet) {
		fs.String("server", "", "the server whose log to read (default: the one you registered with)")
		fs.String("remote", "", "another server, by `name` (two.example), whose log and keys you met through its users")
		fs.Bool("yes", false, "for reset: really forget the log key and what was read")
	},
	run: func(ctx context.Context, e *env, args []string) error {
		sub := args[0]
		if (sub == "handle") != (len(args) == 2) {
			return errors.New("usage: kez log verify | handle <h> | status | dismiss | reset --yes")
		}
		server, err := e.serverFlagOrAccount()
		if err != nil {
			return err
		}
		var c *client.Client
		if acct, aerr := loadAccount(e.dir); aerr == nil && strings.TrimRight(acct.Server, "/") == strings.TrimRight(server, "/") {
			c, _, err = e.accountClient()
		} else {
			c, err = e.newClient(server, nil, "", "")
		}
		if err != nil {
			return err
		}
		remote := e.str("remote")
		if remote != "" {
			if c, err = c.Remote(ctx, "@"+strings.ToLower(remote)); err != nil {
				return err
			}
			server = remote
		}
		switch sub {
		case "verify":
			return e.logVerify(ctx, c)
		case "handle":
			return e.logHandle(ctx, c, args[1])
		case "status":
			return e.logStatus(c)
		case "dismiss":
			if err := c.DismissWarnings(); err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, "warnings dismissed")
			return nil
		case "reset":
			if e.str("yes") != "true" {
				return errors.New("this forgets the pinned log key of " + server + ", its checkpoints and the log read so far (and a fork, if one was seen): " +
					"the next command pins whatever key the server shows then. Do it only if you know why the log changed (the server was reset, say). " +
					"Contacts' pinned keys stay. To do it: kez log reset --yes")
			}
			if err := c.ResetLog(); err != nil {
				return err
			}
			if acct, aerr := loadAccount(e.dir); aerr == nil && remote == "" && strings.TrimRight(acct.Server, "/") == strings.TrimRight(server, "/") {
				acct.LogKey = ""
				if err := saveAccount(e.dir, acct); err != nil {
					return err
				}
			}
			fmt.Fprintf(e.stdout, "forgot the log of %s; the next command pins its key again\n", server)
			return nil
		}
		return fmt.Errorf("unknown: kez log %s (verify, handle, status, dismiss, reset)", sub)
	},
}

func (e *env) logVerify(ctx context.Context, c *client.Client) error {
	rep, err := c.ReadLog(ctx, nil)
	if err != nil {
		return err
	}
	key, _ := c.PinnedLogKey()
	fmt.Fprintf(e.stdout, "log of %s: %d entries; checkpoint %d signed by the pinned key %s\n", c.BaseURL(), rep.Checkpoint.Size, rep.Checkpoint.Size, key)
	fmt.Fprintf(e.stdout, "%d registrations, %d rotations, %d deletions; %d handles bound now\n", rep.Registrations, rep.Rotations, rep.Deletion, rep.Bound)
	for _, s := range rep.Invalid {
		fmt.Fprintf(e.stdout, "INVALID: %s\n", s)
	}
	for _, s := range rep.Violations {
		fmt.Fprintf(e.stdout, "NOT ALLOWED: %s\n", s)
	}
	if n := len(rep.Invalid) + len(rep.Violations); n > 0 {
		return fmt.Errorf("the log holds %d entries that are not valid signed changes or that its own history does not allow", n)
	}
	fmt.Fprintln(e.stdout, "ok: the entries hash to the checkpoint's root, the checkpoint is consistent with every one this client kept, every entry is signed by its key(s), and every change follows from those before it")
	return nil
}

func (e *env) logHandle(ctx context.Context, c *client.Client, handle string) error {
	hist, rep, err := c.HandleHistory(ctx, handle)
	if err != nil {
		return err
	}
	if len(hist) == 0 {
		fmt.Fprintf(e.stdout, "no entries for %s in the %d entries of the log\n", kez.ASCIILower(handle), rep.Checkpoint.Size)
		return nil
	}
	for _, h := range hist {
		at := time.Unix(h.TS, 0).UTC().Format("2006-01-02 15:04:05 UTC")
		switch h.Kind {
		case kez.RegisterType:
			fmt.Fprintf(e.stdout, "#%d  %s  registered  %s\n", h.Index, at, h.Primary)
		case kez.RotateType:
			fmt.Fprintf(e.stdout, "#%d  %s  rotated     %s -> %s\n", h.Index, at, h.Old, h.Primary)
		case kez.DeleteType:
			fmt.Fprintf(e.stdout, "#%d  %s  deleted     %s\n", h.Index, at, h.Primary)
		}
	}
	fmt.Fprintf(e.stdout, "(times are as the key holder signed them; %d entries checked against checkpoint %d)\n", rep.Checkpoint.Size, rep.Checkpoint.Size)
	return nil
}

func (e *env) logStatus(c *client.Client) error {
	st, err := c.TrustState()
	if err != nil {
		return err
	}
	if st.LogKey == "" {
		fmt.Fprintf(e.stdout, "no log key pinned for %s yet\n", c.BaseURL())
		return nil
	}
	fmt.Fprintf(e.stdout, "server      %s (%s)\nlog key     %s (pinned)\n", st.Server, c.BaseURL(), st.LogKey)
	if lines := strings.SplitN(st.Checkpoint, "\n", 4); len(lines) >= 3 {
		fmt.Fprintf(e.stdout, "checkpoint  %s entries, root %s (the largest seen)\n", lines[1], lines[2])
	}
	fmt.Fprintf(e.stdout, "read        %d entries checked\n", st.Scan.Size)
	if st.Self != nil {
		state := "monitored"
		if st.Self.Deleted {
			state = "deleted"
		}
		fmt.Fprintf(e.stdout, "you         %s, %d key(s), %s from entry %d\n", st.Self.Handle, len(st.Self.Keys), state, st.Self.Since)
	}
	pinned, changed, verified := 0, 0, 0
	for _, p := range st.Contacts {
		pinned++
		if p.Changed != nil {
			changed++
		}
		if p.IsVerified() {
			verified++
		}
	}
	fmt.Fprintf(e.stdout, "contacts    %d pinned, %d verified, %d with a changed key not accepted\n", pinned, verified, changed)
	if st.Fork != nil {
		fmt.Fprintf(e.stdout, "FORK        %s\n", oneLine((&client.ForkError{Fork: st.Fork}).Error()))
		fmt.Fprintf(e.stdout, "            kept:\n%s            other:\n%s", indentBlock(st.Fork.Kept), indentBlock(st.Fork.Other))
	}
	for _, w := range st.Warnings {
		fmt.Fprintf(e.stdout, "warning     %s (%s)\n", oneLine(w.Text), when(w.SeenAt))
	}
	for _, server := range slices.Sorted(maps.Keys(st.Remotes)) {
		r := st.Remotes[server]
		state := "ok"
		if r.Fork != nil {
			state = "FORK (kez log status --remote " + server + ")"
		} else if len(r.Warnings) > 0 {
			state = fmt.Sprintf("%d warning(s) (kez log status --remote %s)", len(r.Warnings), server)
		}
		fmt.Fprintf(e.stdout, "remote      %s: log key %s, %d entries read, %d contact(s) pinned; %s\n", server, r.LogKey, r.Scan.Size, len(r.Contacts), state)
	}
	return nil
}

func indentBlock(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("              " + l + "\n")
	}
	return b.String()
}
