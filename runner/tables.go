package runner

import (
	"encoding/json"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// requireSingleTable refuses a spec with several tables (issue 14) in the
// commands that do not handle them yet: plan does, the rest of the
// lifecycle comes table by table. It is the one place that says so, called
// once by each command that refuses, so a command that learns several
// tables drops its call and nothing else.
func requireSingleTable(s *spec.Spec, command string) error {
	if s == nil || !s.MultiTable() {
		return nil
	}
	return exitcode.Errorf(exitcode.BadInput,
		"migration %s has several tables: %s does not handle them yet; plan does (`greenswap plan -f %s`); "+
			"nothing was changed: to migrate now, write one spec per table",
		s.Name, command, fileOr(s.File))
}

// storedSpec decodes a migration row's spec for requireSingleTable; one
// that does not decode is left to the command's own reading to report.
func storedSpec(m *state.Migration) *spec.Spec {
	var s spec.Spec
	if json.Unmarshal(m.Spec, &s) != nil {
		return nil
	}
	return &s
}
