// Package exitcode is the one place that says which failure ends the CLI with
// which exit code. Library packages attach a code to an error (With, or by
// implementing ExitCode); the CLI only calls Of.
package exitcode

import (
	"context"
	"errors"
	"fmt"
)

// Code is a documented process exit code.
type Code int

const (
	OK              Code = 0   // success
	Failed          Code = 1   // the operation failed, or verify found differences
	BadInput        Code = 2   // bad spec, missing table, unreachable database, bad flags
	Blocked         Code = 3   // plan found blocking hazards
	Busy            Code = 4   // another greenswap holds this migration
	LockTimeout     Code = 5   // gave up waiting for a lock
	GuardTripped    Code = 6   // the guard's circuit breaker stayed open too long; sync stopped, checkpointed
	GuardRolledBack Code = 7   // cutover --guard saw a signal past its bound after the swap and rolled back by itself
	Interrupted     Code = 130 // interrupted; state saved, resumable
)

// Table is the documented list, printed by `greenswap help exit-codes` and in the README.
var Table = []struct {
	Code    Code
	Meaning string
}{
	{OK, "success; for plan: nothing blocking; for verify: blue and green are identical"},
	{Failed, "the operation failed, or verify found differences"},
	{BadInput, "bad input: spec, flags, missing table or migration, unreachable database, or a migration not ready for the command (not synced, not verified, a logical stream's backlog above cutover's bound); nothing was changed"},
	{Blocked, "plan (or a command that plans first) found blocking hazards, or verify/cutover/finalize found a change made outside greenswap (schema or privilege drift); nothing was changed"},
	{Busy, "another greenswap process holds this migration's lock (its PID is named)"},
	{LockTimeout, "gave up waiting for a table lock after all retries; everything left as it was (for cutover --guard's own rollback: still cut over, as the message says)"},
	{GuardTripped, "sync stopped because the circuit breaker stayed open longer than --guard-max-open (a health signal past its bound, named in the message and the event log); progress checkpointed, re-run sync to resume"},
	{GuardRolledBack, "cutover --guard saw a health signal past its bound within its window after the swap (named in the message and the event log) and rolled the migration back by itself: the app name reads blue again, nothing lost, the migration is synced and can cut over again"},
	{Interrupted, "interrupted (Ctrl-C / SIGTERM); progress checkpointed, re-run the same command to resume"},
}

// Coded is implemented by errors that know their exit code.
type Coded interface{ ExitCode() Code }

type codedError struct {
	code Code
	err  error
}

func (e *codedError) Error() string  { return e.err.Error() }
func (e *codedError) Unwrap() error  { return e.err }
func (e *codedError) ExitCode() Code { return e.code }

// With attaches code to err (nil stays nil).
func With(code Code, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

// Errorf is fmt.Errorf with an exit code attached.
func Errorf(code Code, format string, args ...any) error {
	return With(code, fmt.Errorf(format, args...))
}

// Of returns the exit code for err: the first code found in its chain;
// context cancellation is Interrupted; anything else Failed.
func Of(err error) Code {
	if err == nil {
		return OK
	}
	var c Coded
	if errors.As(err, &c) {
		return c.ExitCode()
	}
	if errors.Is(err, context.Canceled) {
		return Interrupted
	}
	return Failed
}
