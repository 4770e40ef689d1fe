package guard

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	gosync "sync"
	"time"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/spec"
)

// ReasonPrefix starts every throttle reason the breaker gives, so status,
// --watch and the metrics can tell it from the other throttles.
const ReasonPrefix = "guard: "

// Breaker is the circuit breaker of one sync run. It is a sync.Throttle:
// Hold returns, while a signal is past its bound, the tripped signals'
// text ("guard: lock_waits=3 > 0 (baseline 0): ..."), and "" once they
// have all recovered. The baseline and the first sample are taken on the
// first Hold (before the first batch); samples are at most Opts.Every
// apart; between two, Hold returns the last answer.
//
// Open (tripped) continuously for longer than Opts.MaxOpen, Hold fails
// with an *OpenTooLong (exit code GuardTripped): the backfill stops after
// its last committed batch, checkpointed.
type Breaker struct {
	S *Sampler
	// OnChange, when set, is told when the breaker opens (the tripped
	// signals) and closes (nil): the runner records both as events.
	OnChange func(tripped []Signal)

	mu       gosync.Mutex
	base     *Baseline
	at       time.Time
	reason   string
	tripped  []Signal
	openedAt time.Time
}

// OpenTooLong is the error of a breaker open longer than MaxOpen.
type OpenTooLong struct {
	For     time.Duration
	Max     time.Duration
	Tripped []Signal
}

func (e *OpenTooLong) Error() string {
	var b strings.Builder
	for i, s := range e.Tripped {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s.Text())
	}
	return fmt.Sprintf("the circuit breaker stayed open %s (longer than --guard-max-open %s): %s; sync stopped with the backfill checkpointed: "+
		"find out why the application suffers, then re-run sync to resume (or raise the bound)", e.For.Round(time.Second), e.Max, b.String())
}

func (e *OpenTooLong) ExitCode() exitcode.Code { return exitcode.GuardTripped }

// Hold implements sync.Throttle.
func (b *Breaker) Hold(ctx context.Context) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.base == nil {
		bl, err := b.S.TakeBaseline(ctx)
		if err != nil {
			return "", err
		}
		// b.at stays zero: the first sample is taken now, before the first
		// batch, so a failing probe holds the copy from its start rather
		// than after Every (break5 finding 04).
		b.base = bl
	}
	if time.Since(b.at) >= b.S.Opts.Every.Duration {
		sigs, err := b.S.Sample(ctx, b.base)
		if err != nil {
			return "", err
		}
		b.at = time.Now()
		tripped := Tripped(sigs)
		was := b.tripped != nil
		b.tripped = tripped
		b.reason = ""
		if tripped != nil {
			texts := make([]string, len(tripped))
			for i, s := range tripped {
				texts[i] = s.Text()
			}
			b.reason = ReasonPrefix + strings.Join(texts, "; ")
		}
		switch {
		case tripped != nil && !was:
			b.openedAt = b.at
			if b.OnChange != nil {
				b.OnChange(tripped)
			}
		case tripped == nil && was:
			b.openedAt = time.Time{}
			if b.OnChange != nil {
				b.OnChange(nil)
			}
		}
	}
	if b.tripped != nil && b.S.Opts.MaxOpen.Duration > 0 {
		if open := time.Since(b.openedAt); open > b.S.Opts.MaxOpen.Duration {
			return "", &OpenTooLong{For: open, Max: b.S.Opts.MaxOpen.Duration, Tripped: b.tripped}
		}
	}
	return b.reason, nil
}

// Trip is one tripped signal read back from a throttle reason.
type Trip struct {
	Signal string
	Value  float64
	Bound  float64
}

// ParseReason reads the tripped signals back from a throttle reason the
// breaker gave (nil for any other reason): the metrics carry them as
// gauges without a second source of truth.
func ParseReason(reason string) []Trip {
	rest, ok := strings.CutPrefix(reason, ReasonPrefix)
	if !ok {
		return nil
	}
	var out []Trip
	for _, part := range strings.Split(rest, "; ") {
		name, after, ok := strings.Cut(part, "=")
		if !ok || strings.ContainsAny(name, " :") {
			continue
		}
		val, after, ok := strings.Cut(after, " > ")
		if !ok {
			continue
		}
		bound, _, _ := strings.Cut(after, " ")
		t := Trip{Signal: name, Value: parseNum(val), Bound: parseNum(bound)}
		out = append(out, t)
	}
	return out
}

func parseNum(s string) float64 {
	s = strings.TrimRight(s, "smx/")
	v, _ := strconv.ParseFloat(s, 64)
	return v
}

// Options are the breaker's bounds (the spec's guard: section).
type Options = spec.GuardOptions

// Describe joins the signals' texts, as a reason does.
func Describe(sigs []Signal) string {
	texts := make([]string, len(sigs))
	for i, s := range sigs {
		texts[i] = s.Text()
	}
	return strings.Join(texts, "; ")
}
