# pstd — see README.md. `make run` serves a local issuer; `make test` runs everything.
SHELL := /bin/bash
GO ?= go
BIN := bin
PKGS := ./...

.PHONY: all build test lint fmt fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest $(PKGS)

test: build
	$(GO) test -count=1 $(PKGS)

clean:
	rm -rf $(BIN)
