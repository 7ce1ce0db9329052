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
	./signer/voprf:FuzzHashToGroup \
	./signer/voprf/internal/p384:FuzzP384ScalarMult@3000x \
	./signer/voprf/internal/p384:FuzzP384MultiScalarMult@3000x \
	./signer/hsm:FuzzParseURI \
	./httpapi:FuzzForwardedClientKey \
	./signer/hsm:FuzzSealedKEKGeneration \
	./rp:FuzzParseRedemptionRecordHeader \
	./rp:FuzzVerifyRecord \
	./rp:FuzzParseJWKS \
	./httpapi:FuzzIssuanceHandler \
	./httpapi:FuzzRedemptionHandler \
	./doctor:FuzzAnalyzeCommitment \
	./auditlog:FuzzReadBundle@5000x
FUZZTIME ?= 50000x

.PHONY: all build deps setup run stop test test-ha lint fmt fuzz bench clean

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
	port=$${PSTD_LISTEN##*:} && host=$${PSTD_LISTEN%:*} && \
	if (exec 3<>"/dev/tcp/$${host:-127.0.0.1}/$$port") 2>/dev/null; then \
		echo "pstd: $$PSTD_LISTEN is in use; run with another, e.g. PSTD_LISTEN=127.0.0.1:8490 make run" >&2; exit 1; fi && \
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

# PostgreSQL failover (docs/HA.md): a throwaway three-node Patroni cluster
# (synchronous mode strict), two pstd replicas under a redemption load, kill -9
# of the primary, then every token whose record a client got is replayed.
# Installs patroni and etcd if missing (deploy/ha/deps.sh).
test-ha: deps build
	GO='$(GO)' deploy/ha/test.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest $(PKGS)
	cd deploy/kubernetes && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@latest ./...

# Longer fuzzing by hand, e.g. `make fuzz FUZZ_FOR=10m`; a crash leaves its
# input under the package's testdata/fuzz/ to commit as a regression seed.
FUZZ_FOR ?= 1m
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t##*:} for $(FUZZ_FOR)"; \
		n=$${t##*:}; $(GO) test -run='^$$' -fuzz="^$${n%%@*}\$$" -fuzztime=$(FUZZ_FOR) "$${t%%:*}"; \
	done

# Container image localhost/pstd:$(VERSION), FROM scratch with no registry
# (deploy/image/build.sh; needs root, buildah: `make deps` installs it).
.PHONY: image k8s-render
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
IMAGE ?= localhost/pstd:$(VERSION)
image: deps
	GO='$(GO)' PSTD_VERSION='$(VERSION)' deploy/image/build.sh '$(IMAGE)'

# Kubernetes manifests (deploy/kubernetes/base, Kustomize) rendered for
# $(IMAGE), printed on stdout. kustomize is built from the Go module proxy
# into deploy/kubernetes/.tools/ (gitignored) at a pinned version; keep it
# in step with sigs.k8s.io/kustomize/api in deploy/kubernetes/go.mod.
KUSTOMIZE_VERSION := v5.8.2
KUSTOMIZE := deploy/kubernetes/.tools/$(KUSTOMIZE_VERSION)/kustomize
$(KUSTOMIZE):
	GOBIN='$(abspath $(dir $(KUSTOMIZE)))' GOFLAGS=-mod=mod $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
k8s-render: $(KUSTOMIZE)
	@set -euo pipefail; mkdir -p deploy/kubernetes/.tools; tmp=$$(mktemp -d deploy/kubernetes/.tools/render.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; \
	image='$(IMAGE)'; \
	printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\nimages:\n  - name: localhost/pstd\n    newName: %s\n    newTag: "%s"\n' \
		../../base "$${image%:*}" "$${image##*:}" >"$$tmp/kustomization.yaml"; \
	$(KUSTOMIZE) build "$$tmp"

bench:
	$(GO) test -run '^$$' -bench . -cpu 1 ./signer/voprf/

clean:
	rm -rf $(BIN)
