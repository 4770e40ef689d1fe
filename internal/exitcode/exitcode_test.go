package exitcode

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestOf(t *testing.T) {
	base := errors.New("boom")
	cases := []struct {
		err  error
		want Code
	}{
		{nil, OK},
		{base, Failed},
		{With(BadInput, base), BadInput},
		{fmt.Errorf("wrapped: %w", With(LockTimeout, base)), LockTimeout},
		{context.Canceled, Interrupted},
		{fmt.Errorf("x: %w", context.Canceled), Interrupted},
		{Errorf(Busy, "held by %d", 7), Busy},
	}
	for _, c := range cases {
		if got := Of(c.err); got != c.want {
			t.Errorf("Of(%v) = %d, want %d", c.err, got, c.want)
		}
	}
	if With(Failed, nil) != nil {
		t.Error("With(nil) must stay nil")
	}
	if !errors.Is(With(BadInput, base), base) {
		t.Error("With must wrap")
	}
	seen := map[Code]bool{}
	for _, e := range Table {
		if seen[e.Code] || e.Meaning == "" {
			t.Errorf("exit code table entry %d duplicated or empty", e.Code)
		}
		seen[e.Code] = true
	}
	if len(seen) != 9 {
		t.Errorf("table documents %d codes, want 9", len(seen))
	}
}
