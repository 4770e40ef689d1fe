package shadow

import (
	"context"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/spec"
)

func loadPair(t *testing.T, ddl string) (*Table, *Table) {
	t.Helper()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, ddl)
	ctx := context.Background()
	blue, err := LoadTable(ctx, pool, spec.QualifiedName{Schema: "public", Name: "blue"})
	if err != nil {
		t.Fatal(err)
	}
	green, err := LoadTable(ctx, pool, spec.QualifiedName{Schema: "public", Name: "green"})
	if err != nil {
		t.Fatal(err)
	}
	return blue, green
}

func mappingSpec(t *testing.T, extra string) *spec.Spec {
	t.Helper()
	s, err := spec.ParseSpec([]byte("name: m\ntable: public.blue\ntarget:\n  ddl: CREATE TABLE blue (id int)\n"+extra), "m.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A DEFERRABLE key cannot arbitrate ON CONFLICT and breaks key swaps
// inside one statement: it is never chosen, and naming it is an error.
func TestMappingRefusesDeferrableKeys(t *testing.T) {
	blue, green := loadPair(t, `
		CREATE TABLE blue (id int PRIMARY KEY DEFERRABLE, v text);
		CREATE TABLE green (id bigint PRIMARY KEY, v text);`)
	if _, err := BuildMapping(mappingSpec(t, ""), blue, green); err == nil || !strings.Contains(err.Error(), "no usable key") {
		t.Fatalf("deferrable blue PK: err = %v, want no usable key", err)
	}
	if _, err := BuildMapping(mappingSpec(t, "key: [id]\n"), blue, green); err == nil || !strings.Contains(err.Error(), "DEFERRABLE") {
		t.Fatalf("key: [id] on a deferrable PK: err = %v, want DEFERRABLE named", err)
	}
	blue, green = loadPair(t, `
		CREATE TABLE blue (id int PRIMARY KEY, v text);
		CREATE TABLE green (id bigint PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text);`)
	if _, err := BuildMapping(mappingSpec(t, ""), blue, green); err == nil || !strings.Contains(err.Error(), "target.ddl") {
		t.Fatalf("deferrable green PK: err = %v, want a target.ddl error", err)
	}
}

// Green's key reading a blue column outside blue's key needs FOR SHARE in
// the batch, or a concurrent UPDATE of that column leaves a ghost row.
func TestMappingSourceRowLock(t *testing.T) {
	blue, green := loadPair(t, `
		CREATE TABLE blue (id int PRIMARY KEY, tenant int NOT NULL, v text);
		CREATE TABLE green (id bigint, tenant int NOT NULL, v text, PRIMARY KEY (tenant, id));`)
	m, err := BuildMapping(mappingSpec(t, ""), blue, green)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.SourceRowLock(); got != "FOR SHARE" {
		t.Fatalf("green key (tenant, id) over blue key (id): lock %q, want FOR SHARE", got)
	}
	blue, green = loadPair(t, `
		CREATE TABLE blue (id int PRIMARY KEY, tenant int NOT NULL, v text);
		CREATE TABLE green (id bigint PRIMARY KEY, tenant int NOT NULL, v text);`)
	if m, err = BuildMapping(mappingSpec(t, ""), blue, green); err != nil {
		t.Fatal(err)
	}
	if got := m.SourceRowLock(); got != "FOR KEY SHARE" {
		t.Fatalf("same key: lock %q, want FOR KEY SHARE", got)
	}
}

// Types outside pg_catalog come back schema-qualified, so casts compiled
// under a fixed search_path still find them.
func TestLoadTableQualifiesUserTypes(t *testing.T) {
	blue, _ := loadPair(t, `
		CREATE TYPE mood AS ENUM ('ok', 'sad');
		CREATE TABLE blue (id int PRIMARY KEY, m mood, ms mood[], n numeric(10,2));
		CREATE TABLE green (id int PRIMARY KEY);`)
	want := map[string]string{"id": "integer", "m": "public.mood", "ms": "public.mood[]", "n": "numeric(10,2)"}
	for col, typ := range want {
		if got := blue.Column(col).Type; got != typ {
			t.Errorf("column %s type %q, want %q", col, got, typ)
		}
	}
}
