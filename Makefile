# pstd — see README.md. `make run` serves a local issuer; `make test` runs everything.
SHELL := /bin/bash
GO ?= go
BIN := bin
PKGS := ./...

# Fuzz targets run briefly by `make test`, as ./package:FuzzName pairs,
# e.g. ./signer/voprf:FuzzParseIssueRequest. Each runs for FUZZTIME, which is
# an execution count (Nx) rather than a duration: Go 1.26's fuzz coordinator
# can report a spurious "context deadline exceeded" when a duration expires
# mid-execution (golang/go#75804, fixed in Go 1.27); a count has no deadline.
FUZZ_TARGETS := \
	./signer/voprf:FuzzParseIssueRequest \
	./signer/voprf:FuzzParseIssueResponse \
	./signer/voprf:FuzzParseRedeemRequest \
	./signer/voprf:FuzzRedeem \
	./signer/voprf:FuzzParseClientData \
	./signer/voprf:FuzzParseKeyBlobs \
	./signer/voprf:FuzzClientFinish \
	./signer/voprf:FuzzParseCommitment \
	./signer/hsm:FuzzParseURI \
	./httpapi:FuzzForwardedClientKey \
	./signer/hsm:FuzzSealedKEKGeneration \
	./rp:FuzzParseRedemptionRecordHeader \
	./rp:FuzzVerifyRecord \
	./rp:FuzzParseJWKS \
	./httpapi:FuzzIssuanceHandler \
	./httpapi:FuzzRedemptionHandler
FUZZTIME ?= 50000x

.PHONY: all build deps setup run stop test lint fmt fuzz bench clean

all: build

# VCS stamping (pstd --version, pstd_build_info) whenever this is a git
# checkout, whatever GOFLAGS says; a source tarball builds without it.
BUILDVCS := $(shell git rev-parse --git-dir >/dev/null 2>&1 && echo true || echo false)

build:
	$(GO) build -buildvcs=$(BUILDVCS) -o $(BIN)/ ./cmd/...

# Debian packages for the dev/test stack (softhsm2, postgresql, chromium), only if missing.
deps:
	deploy/dev/deps.sh

# Local stack under .pstd/: PostgreSQL on 127.0.0.1:$${PSTD_DEV_PG_PORT:-54329},
# SoftHSM token pstd-dev, .pstd/env; then build, migrate and create keys.
# PSTD_DEV_STATE=/abs/dir keeps all of it in /abs/dir instead of .pstd/.
setup:
	MAKE='$(MAKE)' deploy/dev/setup.sh

run: setup
	@set -a && . "$${PSTD_DEV_STATE:-./.pstd}/env" && set +a && \
	echo "pstd: serving $$PSTD_ISSUER_ORIGIN (demo pages at $$PSTD_ISSUER_ORIGIN/demo/)" && \
	echo "Try it in Chromium:" && \
	echo "  chromium --user-data-dir=\$$(mktemp -d) --additional-private-state-token-key-commitments='$$($(BIN)/pstctl commitment --chromium)' $$PSTD_ISSUER_ORIGIN/demo/" && \
	exec $(BIN)/pstd serve --demo

stop:
	deploy/dev/stop.sh

# Checks that a cgo-less build names cgo, smoke-tests `make setup` on a
# scratch state directory, then race-enabled tests against a throwaway
# PostgreSQL cluster (always stopped afterwards), then a short fuzz pass over
# FUZZ_TARGETS.
test: deps build
	MAKE='$(MAKE)' GO='$(GO)' PKGS='$(PKGS)' FUZZ_TARGETS='$(FUZZ_TARGETS)' FUZZTIME='$(FUZZTIME)' deploy/dev/test.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest $(PKGS)

# Longer fuzzing by hand, e.g. `make fuzz FUZZ_FOR=10m`; a crash leaves its
# input under the package's testdata/fuzz/ to commit as a regression seed.
FUZZ_FOR ?= 1m
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t##*:} for $(FUZZ_FOR)"; \
		$(GO) test -run='^$$' -fuzz="^$${t##*:}\$$" -fuzztime=$(FUZZ_FOR) "$${t%%:*}"; \
	done

bench:
	$(GO) test -run '^$$' -bench . -cpu 1 ./signer/voprf/

clean:
	rm -rf $(BIN)
