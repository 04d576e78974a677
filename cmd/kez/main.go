// Command kez is the terminal client for KEZ chat: end-to-end encrypted
// messages between handle@server addresses.
//
//	kez init [--seed HEX|-]              create (or import) your key
//	kez register <handle> --server URL   claim a handle on a server
//	kez whois <handle|handle@server>     show a user's primary
//	kez send <to> [text...]              send a message (text from stdin if none)
//	kez inbox                            list stored messages (requests apart)
//	kez listen                           print messages as they arrive
//	kez ack [seq]                        delete messages up to seq (default: last shown)
//	kez requests                         list message requests by sender
//	kez accept|block <who>               let a sender in, or refuse them
//	kez unaccept|unblock <who>           undo that
//	kez contacts                         list accepted and blocked senders
//	kez verify <who> [--yes]             show the safety number; mark verified
//	kez accept-key <who>                 accept a contact's changed key
//	kez rotate [--forget-old]            replace your key (old and new sign)
//	kez delete --yes                     delete your account
//	kez log verify|handle <h>|status     check the server's binding log
//	kez outbox [--retry]                 messages to other servers not delivered yet
//
// who may be a user of another server (bob@two.example, SPEC §8): kez looks
// them up there and sends there. --resolve S=URL (or KEZ_RESOLVE) says
// where server S is when it is not at https://S.
//
// Every command takes --config DIR (default: $KEZ_CONFIG_DIR, else the user
// config dir + /kez).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
	stop()
	os.Exit(code)
}

// app is the environment a command runs in, swapped out in tests.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	http           *http.Client // nil: the default
}

const usage = `kez — end-to-end encrypted chat in the terminal

usage:
  kez init [--seed HEX|-] [--force]       create or import your key
  kez register <handle> --server URL      claim handle on the server at URL
  kez whois <handle|handle@server>        show a user's address and primary
  kez send <to> [text...]                 send text (read from stdin if none)
  kez inbox [--since N] [--limit N]       list the messages stored for you; requests apart
  kez listen [--since N]                  print messages live; resumes where it stopped
  kez ack [seq]                           delete messages up to seq (default: the last shown)
  kez requests                            list message requests (senders who are not contacts)
  kez accept <who>                        make who a contact: no longer requests
  kez block <who>                         refuse who's messages, delete their requests
  kez unaccept <who> | kez unblock <who>  make who a stranger again
  kez contacts                            list accepted and blocked senders

trust (the server's binding log, pinned keys, safety numbers):
  kez whois <who>                         a user's key, how it is pinned, whether you verified it
  kez verify <who> [--yes]                show your safety number with who; --yes: it matches, mark verified
  kez accept-key <who>                    accept who's changed key (sending to it is blocked until then)
  kez rotate [--forget-old]               replace your key: old and new sign, contacts follow with a notice
  kez delete [--yes]                      delete your account on the server (says what it does first)
  kez log verify                          download the whole log and check every entry and the tree
  kez log handle <h>                      a handle's history: registrations, rotations, deletions
  kez log status | dismiss | reset --yes  what is kept about the log; hide warnings; forget the log

other servers (federation):
  kez send bob@two.example hi             write to a user of another server: it is looked up and
                                          verified there, under that server's own pinned log key
  kez outbox [--retry] [--drop-failed]    messages to other servers waiting to be delivered; --retry: now

who is a handle, handle@server (any server) or ed25519:<primary>.

every command takes --config DIR (default $KEZ_CONFIG_DIR, else %s)
and --resolve S=URL (repeatable; $KEZ_RESOLVE="S=URL,..."): reach server S at URL instead of
https://S (for test setups and private networks)
`

// command is one subcommand: its flags and what it does with its arguments.
type command struct {
	name             string
	args             string // usage of the positional arguments
	minArgs, maxArgs int    // how many positional arguments; maxArgs -1: any
	flags            func(fs *flag.FlagSet)
	run              func(ctx context.Context, e *env, args []string) error
}

var commands = []*command{initCmd, registerCmd, whoisCmd, sendCmd, inboxCmd, listenCmd, ackCmd,
	requestsCmd, acceptCmd, unacceptCmd, blockCmd, unblockCmd, contactsCmd,
	verifyCmd, acceptKeyCmd, rotateCmd, deleteCmd, logCmd, outboxCmd}

// run executes one kez command line and returns the exit code: 0 done,
// 1 failed, 2 bad usage.
func run(ctx context.Context, args []string, a *app) int {
	global := flag.NewFlagSet("kez", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	configFlag := global.String("config", "", "config directory")
	var resolve resolveFlag
	global.Var(&resolve, "resolve", "server=base")
	if err := global.Parse(args); err != nil || global.NArg() == 0 {
		fmt.Fprintf(a.stderr, usage, defaultConfigDirHint())
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	name, rest := global.Arg(0), global.Args()[1:]
	if name == "help" {
		fmt.Fprintf(a.stdout, usage, defaultConfigDirHint())
		return 0
	}
	for _, cmd := range commands {
		if cmd.name == name {
			return a.runCommand(ctx, cmd, rest, *configFlag, resolve)
		}
	}
	fmt.Fprintf(a.stderr, "kez: unknown command %q (run kez help)\n", name)
	return 2
}

func (a *app) runCommand(ctx context.Context, cmd *command, args []string, config string, resolve resolveFlag) int {
	fs := flag.NewFlagSet("kez "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.StringVar(&config, "config", config, "config `directory`")
	fs.Var(&resolve, "resolve", "reach the server named S at base URL `S=URL` instead of looking it up (repeatable; also $KEZ_RESOLVE=\"S=URL,…\")")
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "usage: kez %s %s\n", cmd.name, cmd.args)
		fs.PrintDefaults()
	}
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(positional) < cmd.minArgs || cmd.maxArgs >= 0 && len(positional) > cmd.maxArgs {
		fs.Usage()
		return 2
	}
	dir, err := configDir(config, a.getenv)
	var servers map[string]string
	if err == nil {
		servers, err = resolveMap(a.getenv("KEZ_RESOLVE"), resolve)
	}
	if err == nil {
		err = cmd.run(ctx, &env{app: a, dir: dir, fs: fs, resolve: servers}, positional)
	}
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return 130 // interrupted
	default:
		fmt.Fprintln(a.stderr, "kez: "+oneLine(describe(err)))
		return 1
	}
}

// parseInterspersed lets flags come after positional arguments, as in
// "kez register alice --server URL"; the flag package alone stops at the
// first positional one. After "--" everything is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func defaultConfigDirHint() string {
	if base, err := os.UserConfigDir(); err == nil {
		return base + string(os.PathSeparator) + "kez"
	}
	return "<user config dir>/kez"
}

// oneLine keeps an error message to one line for the terminal.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// requestTimeout bounds every command but listen.
const requestTimeout = 30 * time.Second
