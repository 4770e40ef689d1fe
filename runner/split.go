package runner

// Table splits (issue 15): one blue, several greens.

import (
	"github.com/greenswap/greenswap/spec"
)

// refuseSplit is the answer of a command that does not handle a split yet:
// a spec error (exit 2) before anything is touched.
func refuseSplit(sp *spec.Spec, command string) error {
	return sp.Errorf("split", "wait for the release that completes table splits, or migrate the table without split:",
		"%s does not handle a table split yet", command)
}
