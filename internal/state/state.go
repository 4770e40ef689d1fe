// Package state owns greenswap's own bookkeeping inside the user's database:
// the greenswap schema, one row per migration, the append-only event log, the
// lifecycle state machine and the per-migration advisory lock.
package state

import (
	"fmt"
	"slices"
)

// State is where a migration stands in its lifecycle.
type State string

const (
	Planned    State = "planned"     // row exists, nothing built yet
	Syncing    State = "syncing"     // adopted; green built and being filled
	Synced     State = "synced"      // green equals blue and stays equal (bidirectional)
	CutOver    State = "cut_over"    // the app name reads green
	Finalized  State = "finalized"   // green is the app's table; blue retired
	RolledBack State = "rolled_back" // torn down before cutover; the app has its table back
)

// transitions lists, for each state, the states it may move to.
var transitions = map[State][]State{
	Planned:    {Syncing, RolledBack},
	Syncing:    {Syncing, Synced, RolledBack},
	Synced:     {Syncing, CutOver, RolledBack},
	CutOver:    {Synced, Finalized},
	Finalized:  nil,
	RolledBack: {Planned, Syncing},
}

// Valid reports whether s is a known state.
func (s State) Valid() bool { _, ok := transitions[s]; return ok }

// CanMoveTo reports whether the lifecycle allows s → to.
func (s State) CanMoveTo(to State) bool { return slices.Contains(transitions[s], to) }

// Terminal reports whether nothing can follow s without starting over.
func (s State) Terminal() bool { return s == Finalized }

// TransitionError is an attempted move the lifecycle does not allow.
type TransitionError struct {
	Migration string
	From, To  State
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("migration %s is %s and cannot move to %s", e.Migration, e.From, e.To)
}
