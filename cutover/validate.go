package cutover

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// PendingFK is a foreign key a swap added NOT VALID, to be validated once
// the swap committed. The caller records the swap's ones in the swap's
// own transaction: a process killed between the commit and the VALIDATE
// leaves them NOT VALID (enforced for new rows, the old ones never
// checked), and only the record says which ones were greenswap's.
type PendingFK struct {
	Table spec.QualifiedName `json:"table"` // the referencing table
	Name  string             `json:"name"`
	// SQL is the VALIDATE CONSTRAINT statement (filled by NotValid).
	SQL string `json:"sql,omitempty"`
}

// ValidateSQL is the statement that validates k (a SHARE UPDATE
// EXCLUSIVE lock on the referencing table, ROW SHARE on the referenced
// one: writers carry on).
func (k PendingFK) ValidateSQL() string {
	return "ALTER TABLE " + db.Ident(k.Table.Schema, k.Table.Name) + " VALIDATE CONSTRAINT " + db.Ident(k.Name)
}

// PendingFKs are the foreign keys the plan adds NOT VALID and its After
// statements validate.
func (p *SwapPlan) PendingFKs() []PendingFK {
	out := make([]PendingFK, 0, len(p.validate))
	for _, f := range p.validate {
		out = append(out, PendingFK{Table: f.Table, Name: f.Name})
	}
	return out
}

// NotValid returns those of fks that exist now and are still NOT VALID,
// once each, in the order given, with their SQL.
func NotValid(ctx context.Context, q db.Querier, fks []PendingFK) ([]PendingFK, error) {
	var out []PendingFK
	seen := map[PendingFK]bool{}
	for _, k := range fks {
		k.SQL = ""
		if seen[k] {
			continue
		}
		seen[k] = true
		var n int
		err := q.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_constraint c
			JOIN pg_catalog.pg_class r ON r.oid = c.conrelid JOIN pg_catalog.pg_namespace s ON s.oid = r.relnamespace
			WHERE s.nspname = $1 AND r.relname = $2 AND c.conname = $3 AND c.contype = 'f' AND NOT c.convalidated`,
			k.Table.Schema, k.Table.Name, k.Name).Scan(&n)
		if err != nil {
			return nil, fmt.Errorf("read foreign key %s on %s: %w", k.Name, k.Table, err)
		}
		if n > 0 {
			k.SQL = k.ValidateSQL()
			out = append(out, k)
		}
	}
	return out, nil
}

// ValidateFKs validates each of fks in its own transaction with the lock
// retry, as Validate does a swap's: a failure is reported, not fatal.
func ValidateFKs(ctx context.Context, pool *pgxpool.Pool, fks []PendingFK, lock shadow.LockOptions) []Validation {
	sqls := make([]string, 0, len(fks))
	for _, k := range fks {
		sqls = append(sqls, k.ValidateSQL())
	}
	return validateAll(ctx, pool, sqls, lock)
}

func validateAll(ctx context.Context, pool *pgxpool.Pool, sqls []string, lock shadow.LockOptions) []Validation {
	var out []Validation
	for _, s := range sqls {
		t0 := time.Now()
		err := shadow.RunWithLockRetry(ctx, pool, "validate", lock, nil, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, s)
			return err
		})
		v := Validation{SQL: s, DurationMS: ms(time.Since(t0))}
		if err != nil {
			v.Error = err.Error()
		}
		out = append(out, v)
	}
	return out
}
