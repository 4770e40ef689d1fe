// Command greenswap rewrites the structure of a live PostgreSQL table with
// zero downtime. This package only parses flags, calls package runner and
// maps errors to exit codes (see `greenswap help exit-codes`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/runner"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run is main without the process exit, so tests can drive the CLI.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, args)
	code := exitcode.Of(err)
	redact := func(msg string) string {
		if dsn := dsnFrom(args); dsn != "" {
			return logx.Redact(msg, dsn)
		}
		return msg
	}
	switch {
	case err == nil:
	case code == exitcode.Interrupted:
		// The cancellation surfaces as whatever statement was running
		// failing with "context canceled"; it did not fail, the operator
		// stopped it, so say that once, with what the command was doing.
		fmt.Fprintf(stderr, "greenswap: %s\n", redact(interruptedLine(args, err)))
	case !errors.Is(err, errAlreadyReported):
		fmt.Fprintf(stderr, "greenswap: %s\n", redact(oneLine(err.Error())))
	}
	return int(code)
}

// interruptedLine is the one line an interrupted command prints: during
// which command and step, what state that leaves, and the command to run
// next (the same command line, which every command accepts as a resume).
func interruptedLine(args []string, err error) string {
	// An error that knows its own line (cutover's guard window: still cut
	// over, not "the swap either committed or did not") says it.
	var own interface{ InterruptedLine() string }
	if errors.As(err, &own) {
		return own.InterruptedLine()
	}
	cmd := commandName(args)
	rerun := "greenswap " + shellJoin(args[1:])
	step := strings.TrimSpace(oneLine(err.Error()))
	for _, noise := range []string{context.Canceled.Error(), "timeout", "canceling statement due to user request"} {
		for {
			trimmed := strings.TrimSuffix(strings.TrimSuffix(step, noise), ":")
			trimmed = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(trimmed), ":"))
			if trimmed == step {
				break
			}
			step = trimmed
		}
	}
	during := cmd
	if cmd == "" {
		during = "greenswap"
	}
	if step != "" && step != errAlreadyReported.Error() {
		during += " [" + clipRunes(step, 120) + "]"
	}
	var state string
	switch cmd {
	case "plan", "status", "help", "verify":
		state = "nothing was changed: run `" + rerun + "` again"
	case "sync":
		state = "nothing is lost, the copy is checkpointed: run `" + rerun + "` again to resume"
	case "cutover", "rollback":
		state = "the swap is one transaction, so it either committed or did not: `greenswap status` says which; run `" + rerun + "` again to retry"
	default:
		state = "`greenswap status` shows where it stands: run `" + rerun + "` again to continue"
	}
	return "interrupted during " + during + "; " + state
}

// commandName is the first argument that names a command (its aliases
// mapped to the name), "" when none does.
func commandName(args []string) string {
	cmds := commands()
	for _, a := range args[1:] {
		for _, c := range cmds {
			if a == c.Name || slices.Contains(c.Aliases, a) {
				return c.Name
			}
		}
	}
	return ""
}

// shellJoin quotes what a shell would split or expand.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;#~!") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func clipRunes(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}

// oneLine joins a multi-line error (pgx lists every address it tried, one
// per line) into the one line the CLI promises on stderr.
func oneLine(msg string) string {
	lines := strings.Split(strings.TrimSpace(msg), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(lines, "; ")
}

// errAlreadyReported marks an error whose details the command printed itself.
var errAlreadyReported = errors.New("already reported")

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:                 "greenswap",
		Usage:                "rewrite the structure of a live PostgreSQL table with zero downtime",
		Version:              version,
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		ExitErrHandler:       func(*cli.Context, error) {}, // run() maps errors to exit codes
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dsn", Usage: "connection string (else DATABASE_URL, else libpq PG* variables and ~/.pgpass)", EnvVars: []string{"DATABASE_URL"}},
			&cli.StringFlag{Name: "log-format", Value: "auto", Usage: "auto|console|json (auto: console on a terminal, JSON otherwise)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug|info|warn|error"},
		},
		Commands: commands(),
		// No command, or a word that is none: help, or exit 2 naming it.
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return exitcode.Errorf(exitcode.BadInput, "no command %q; see `greenswap --help`", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		OnUsageError: usageError,
		Before:       checkGlobalFlags,
	}
}

// checkGlobalFlags refuses a --log-format or --log-level the logger would
// otherwise quietly replace by its default: the operator asked for
// something and must learn they did not get it.
func checkGlobalFlags(c *cli.Context) error {
	for _, f := range []struct{ name, valid string }{
		{"log-format", "auto|console|json"},
		{"log-level", "debug|info|warn|error"},
	} {
		v := c.String(f.name)
		ok := false
		for _, w := range strings.Split(f.valid, "|") {
			ok = ok || v == w
		}
		if !ok {
			return exitcode.Errorf(exitcode.BadInput, "--%s %q is not valid: use one of %s", f.name, v, f.valid)
		}
	}
	return nil
}

// usageError turns a flag error, of the app or of a command, into exit 2
// with one line naming the help to read (urfave/cli's default prints the
// whole help to stdout and exits 1).
func usageError(c *cli.Context, err error, _ bool) error {
	top := c.Command == nil || c.Command.Name == "" || c.Command.Name == c.App.Name
	if errors.Is(err, flag.ErrHelp) {
		// Our own "help" command keeps urfave/cli from adding its --help
		// flag to the app, so greenswap --help lands here.
		if top {
			return cli.ShowAppHelp(c)
		}
		return nil // a command's --help was printed by its own flag
	}
	if top {
		return exitcode.Errorf(exitcode.BadInput, "%s (see `greenswap --help`)", err)
	}
	return exitcode.Errorf(exitcode.BadInput, "%s (see `greenswap %s --help`)", err, c.Command.Name)
}

// commands lists every subcommand, in the order of the operator's day; each
// lives in its own file.
func commands() []*cli.Command {
	cmds := []*cli.Command{
		planCommand(),
		syncCommand(),
		runCommand(),
		pauseCommand(),
		resumeCommand(),
		verifyCommand(),
		cutoverCommand(),
		rollbackCommand(),
		finalizeCommand(),
		statusCommand(),
		helpCommand(),
	}
	for _, c := range cmds {
		c.OnUsageError = usageError
		withFlagValueChecks(c)
	}
	return cmds
}

// helpCommand replaces urfave/cli's own help so that `greenswap help
// exit-codes` works next to `greenswap help COMMAND`.
func helpCommand() *cli.Command {
	return &cli.Command{
		Name:      "help",
		Aliases:   []string{"h"},
		Usage:     "show help for a command, or a topic: exit-codes",
		ArgsUsage: "[COMMAND | exit-codes]",
		Description: `help shows the help of greenswap or of one command, or a topic.

Example:
   greenswap help plan
   greenswap help exit-codes`,
		Action: func(c *cli.Context) error {
			// urfave/cli stops reading flags at the first argument, so a
			// flag after the topic arrives here as a second argument.
			if extra := c.Args().Get(1); extra != "" {
				if strings.HasPrefix(extra, "-") {
					return exitcode.Errorf(exitcode.BadInput, "flag provided but not defined: %s (see `greenswap help --help`)", extra)
				}
				return exitcode.Errorf(exitcode.BadInput, "help takes one COMMAND or topic, got also %q (see `greenswap help --help`)", extra)
			}
			switch arg := c.Args().First(); arg {
			case "":
				return cli.ShowAppHelp(c)
			case "exit-codes":
				printExitCodes(c.App.Writer)
				return nil
			default:
				cmd := c.App.Command(arg)
				if cmd == nil {
					return exitcode.Errorf(exitcode.BadInput, "no command or help topic %q (topics: exit-codes)", arg)
				}
				// Printed directly: cli.ShowCommandHelp, given this
				// command's context, looks the name up among the help
				// command's own subcommands and finds nothing.
				cli.HelpPrinter(c.App.Writer, cli.CommandHelpTemplate, cmd)
				return nil
			}
		},
	}
}

func printExitCodes(w io.Writer) {
	fmt.Fprintln(w, "greenswap exit codes:")
	for _, e := range exitcode.Table {
		fmt.Fprintf(w, "  %3d  %s\n", e.Code, e.Meaning)
	}
}

// logger builds the zerolog logger from the global flags.
func logger(c *cli.Context) zerolog.Logger {
	log, _ := logx.New(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	return log
}

// connect opens the runner environment from the global flags.
func connect(c *cli.Context) (*runner.Env, error) {
	return runner.Connect(c.Context, c.String("dsn"), logger(c))
}

// dsnFrom finds --dsn in raw args (for redacting error text), else DATABASE_URL.
func dsnFrom(args []string) string {
	for i, a := range args {
		if a == "--dsn" && i+1 < len(args) {
			return args[i+1]
		}
		if len(a) > 6 && a[:6] == "--dsn=" {
			return a[6:]
		}
	}
	return os.Getenv("DATABASE_URL")
}

var errNotImplemented = errors.New("not implemented yet")
