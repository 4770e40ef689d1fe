package sync_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	gosync "sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
	"github.com/greenswap/greenswap/trigger"
)

// recorder is a pgx tracer keeping every statement a pool sends as sent
// and with its text arguments written into it as literals (plan shows the
// flag and the settings that way; the batch with its placeholders).
type recorder struct {
	mu   gosync.Mutex
	sent []string
}

func (r *recorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	sql := d.SQL
	for i := len(d.Args); i >= 1; i-- {
		if s, ok := d.Args[i-1].(string); ok {
			sql = strings.ReplaceAll(sql, fmt.Sprintf("$%d", i), db.Literal(s))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, d.SQL, sql)
	return ctx
}

func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Plan shows the backfill's statements as the Backfiller sends them (issue
// 13, item 4): for a composite quoted key named out of the index's order,
// a green key that reads a blue column outside blue's key (FOR SHARE),
// identity ALWAYS, a stored generated column and a partitioned green, the
// plan step shows every statement the Backfiller sends, to the byte (the
// flag and the settings with their arguments filled in): the bound
// queries, the plain first and middle batch, and the ON CONFLICT form a
// batch whose range holds a row the trigger wrote is redone with.
func TestPlanShowsTheStatementsTheBackfillerRuns(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, table, spec, touch string }{
		{"composite key", `CREATE TABLE public."Order Items" (tenant text COLLATE "C" NOT NULL, "a""b" int NOT NULL, note text, PRIMARY KEY (tenant, "a""b"));
			INSERT INTO public."Order Items" SELECT 't' || g % 3, g, 'n' FROM generate_series(1, 200) g`,
			`name: pv
table: public."Order Items"
key: ['a"b', tenant]
target:
  ddl: CREATE TABLE "Order Items" (tenant text COLLATE "C" NOT NULL, "a""b" bigint NOT NULL, note text, PRIMARY KEY (tenant, "a""b"))
`, `UPDATE public."Order Items" SET note = 'x' WHERE "a""b" = 190`},
		{"green key reads a column outside blue's", `CREATE TABLE public.accts (id int PRIMARY KEY, tenant_id int NOT NULL); INSERT INTO public.accts SELECT g, g % 4 FROM generate_series(1, 200) g`,
			`name: pv
table: public.accts
target:
  ddl: CREATE TABLE accts (id int NOT NULL, tenant_id int NOT NULL, PRIMARY KEY (tenant_id, id))
`, `UPDATE public.accts SET tenant_id = tenant_id WHERE id = 150`},
		{"identity always", `CREATE TABLE public.items (id int PRIMARY KEY, v text); INSERT INTO public.items SELECT g, 'v' FROM generate_series(1, 200) g`,
			`name: pv
table: public.items
target:
  ddl: CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)
`, `UPDATE public.items SET v = 'x' WHERE id = 150`},
		{"generated column", `CREATE TABLE public.lines (id int PRIMARY KEY, qty int NOT NULL, price int NOT NULL); INSERT INTO public.lines SELECT g, 1, g FROM generate_series(1, 200) g`,
			`name: pv
table: public.lines
target:
  ddl: CREATE TABLE lines (id int PRIMARY KEY, qty int NOT NULL, price int NOT NULL, total int GENERATED ALWAYS AS (qty * price) STORED)
`, `UPDATE public.lines SET qty = 2 WHERE id = 150`},
		{"partitioned green", `CREATE TABLE public.events (id int PRIMARY KEY, kind text NOT NULL); INSERT INTO public.events SELECT g, 'k' FROM generate_series(1, 200) g`,
			`name: pv
table: public.events
target:
  ddl: CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL) PARTITION BY RANGE (id)
  partitions:
    - CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (MINVALUE) TO (100)
    - CREATE TABLE events_rest PARTITION OF events DEFAULT
`, `UPDATE public.events SET kind = 'x' WHERE id = 150`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool, dsn := pgtest.NewPool(t)
			pgtest.Exec(t, dsn, c.table)
			spec, err := spec.ParseSpec([]byte(c.spec), "test.yaml", "yaml")
			if err != nil {
				t.Fatal(err)
			}
			env, err := runner.Connect(ctx, dsn, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
			if err != nil {
				t.Fatal(err)
			}
			res, err := runner.Plan(ctx, env, spec, runner.PlanOptions{})
			env.Close()
			if err != nil {
				t.Fatal(err)
			}
			var shown []string
			for _, st := range res.Steps {
				if st.Name == "backfill" {
					shown = st.SQL
				}
			}
			if len(shown) != len(gssync.BatchPreviewLabels()) {
				t.Fatalf("plan's backfill step shows %d statements, labels name %d: %q", len(shown), len(gssync.BatchPreviewLabels()), shown)
			}

			f := setupOn(t, pool, dsn, "SELECT 1", c.spec)
			pgtest.Exec(t, dsn, c.touch) // the trigger writes this row to green: its batch conflicts
			rec := &recorder{}
			cfg, err := pgxpool.ParseConfig(dsn)
			if err != nil {
				t.Fatal(err)
			}
			cfg.ConnConfig.Tracer = rec
			traced, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer traced.Close()
			b := f.backfiller(t, gssync.Options{BatchSize: 20, Fixed: true, LockTimeout: spec.Sync.WithDefaults().LockTimeout.Duration})
			b.Pool = traced
			r, err := b.Run(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.Redone == 0 {
				t.Fatalf("no batch was redone with ON CONFLICT: the test proves nothing (%+v)", r)
			}
			rec.mu.Lock()
			sent := slices.Clone(rec.sent)
			rec.mu.Unlock()
			// Every statement the Backfiller sent (the raw text; the
			// recorder also keeps each with its text arguments filled in,
			// which is how plan shows the flag and the settings) is one
			// plan shows, byte for byte: first, middle and last batch,
			// the bound queries and the redo. Only the transaction
			// control pgx sends itself is not plan's to show.
			var forms []string // which of plan's statements ran
			for i := 0; i < len(sent); i += 2 {
				raw, filled := sent[i], sent[i+1]
				switch strings.ToLower(raw) {
				case "begin", "commit", "rollback":
					continue
				case strings.ToLower(gssync.LockWaitersSQL):
					continue // the lock-waiter watch of a batch that ran past 100 ms, on the same pool: not the copy's
				}
				j := slices.Index(shown, raw)
				if j < 0 {
					j = slices.Index(shown, filled)
				}
				if j < 0 {
					t.Errorf("the Backfiller sent a statement plan does not show:\n%s\nplan shows:\n%s", raw, strings.Join(shown, "\n--\n"))
					continue
				}
				forms = append(forms, gssync.BatchPreviewLabels()[j])
			}
			// The run covered what the claim is about: the bound queries,
			// the plain first and middle batch, the redo of a middle
			// batch in the ON CONFLICT form and, as the conflict keeps
			// that form for the batches after it, the last batch in it.
			labels := gssync.BatchPreviewLabels()
			for _, want := range []int{0, 1, 2, 3, 4, 5, 9, 10} {
				if !slices.Contains(forms, labels[want]) {
					t.Errorf("the Backfiller never sent plan's %q: the run does not exercise it", labels[want])
				}
			}

			// A parallel copy, from the start and from a one-cursor
			// checkpoint, on an emptied green: its sample and its
			// range-bounded upper ends are plan's too.
			cursor := r.Cursor
			f.mu.Lock()
			if len(f.checkpoints) > 1 {
				cursor = f.checkpoints[0].Cursor
			}
			f.mu.Unlock()
			forms = nil
			for _, from := range []gssync.Cursor{nil, cursor} {
				emptyGreen(t, f)
				rec.mu.Lock()
				rec.sent = nil
				rec.mu.Unlock()
				pb := f.backfiller(t, gssync.Options{BatchSize: 20, Fixed: true, Workers: 2, RangeRows: 20,
					LockTimeout: spec.Sync.WithDefaults().LockTimeout.Duration})
				pb.Pool = traced
				pr, err := pb.Run(ctx, from)
				if err != nil {
					t.Fatal(err)
				}
				if len(pr.Ranges) < 2 {
					t.Fatalf("the parallel run was not split: %+v", pr)
				}
				rec.mu.Lock()
				sent := slices.Clone(rec.sent)
				rec.mu.Unlock()
				for i := 0; i < len(sent); i += 2 {
					raw, filled := sent[i], sent[i+1]
					switch strings.ToLower(raw) {
					case "begin", "begin read only", "commit", "rollback", strings.ToLower(gssync.LockWaitersSQL):
						continue
					}
					j := slices.Index(shown, raw)
					if j < 0 {
						j = slices.Index(shown, filled)
					}
					if j < 0 {
						t.Errorf("the parallel Backfiller sent a statement plan does not show:\n%s", raw)
						continue
					}
					forms = append(forms, labels[j])
				}
			}
			for _, want := range labels[len(labels)-4:] {
				if !slices.Contains(forms, want) {
					t.Errorf("the parallel Backfiller never sent plan's %q", want)
				}
			}
		})
	}
}

// emptyGreen deletes green's rows under the sync flag (green's write gate
// lets only greenswap's own writes through before synced).
func emptyGreen(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	flag, args := trigger.SyncFlagSQL(f.names)
	if _, err := tx.Exec(ctx, flag, args...); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM "+db.Ident(f.names.Green.Schema, f.names.Green.Name)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}
