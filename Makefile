# latch — run `make help` for the targets.

SHELL         := /bin/bash
.DEFAULT_GOAL := help
GO            ?= go

VAULT_VERSION := 1.21.0
SPIRE_VERSION := 1.13.3
ETCD_VERSION  := 3.7.3
TOOLS         := $(CURDIR)/.tools
VAULT         := $(TOOLS)/vault-$(VAULT_VERSION)/vault
SPIRE_SERVER  := $(TOOLS)/spire-$(SPIRE_VERSION)/spire-server
SPIRE_AGENT   := $(TOOLS)/spire-$(SPIRE_VERSION)/spire-agent
ETCD          := $(TOOLS)/etcd-$(ETCD_VERSION)/etcd
OIDC_VERSION  := zitadel-3.52.0
OIDC          := $(TOOLS)/oidc-$(OIDC_VERSION)/latch-oidc-provider
# The MCP TypeScript SDK's client of the MCP tests, pinned by its lockfile.
MCP_TS        := integration/server/testdata/mcp-ts
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TESTFLAGS ?=
FUZZTIME  ?= 30s

# The integration harness finds the tools here.
export LATCH_TOOLS_BIN := $(TOOLS)/bin

.PHONY: help build test tools postgres chromium clients demo demo-ha up bench bench-pinned profile migrate-100k fuzz stress clean distclean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build bin/latch
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/latch ./cmd/latch

# integration/server runs alone, after the rest: its flood and latency
# checks measure latch, not the other packages' Vaults and SPIREs beside it.
test: tools ## gofmt check, go vet, go test -race ./... with the integration tests (TESTFLAGS=-v for detail)
	@unformatted=$$(gofmt -l $$(find . -name '*.go' -not -path './.tools/*')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m $(TESTFLAGS) $$($(GO) list ./... | grep -v '/integration/server$$')
	$(GO) test -race -count=1 -timeout 30m $(TESTFLAGS) ./integration/server

tools: $(VAULT) $(SPIRE_SERVER) $(SPIRE_AGENT) $(ETCD) $(OIDC) $(MCP_TS)/node_modules/.package-lock.json postgres chromium clients ## Build Vault, SPIRE, etcd and the test OpenID Provider into .tools/ (once per version), install PostgreSQL, Chromium, curl and Python and the MCP TypeScript SDK (npm ci)
	@mkdir -p $(TOOLS)/bin
	@ln -sfn $(VAULT) $(TOOLS)/bin/vault
	@ln -sfn $(SPIRE_SERVER) $(TOOLS)/bin/spire-server
	@ln -sfn $(SPIRE_AGENT) $(TOOLS)/bin/spire-agent
	@ln -sfn $(ETCD) $(TOOLS)/bin/etcd
	@ln -sfn $(OIDC) $(TOOLS)/bin/latch-oidc-provider
	@echo "tools ready: vault $(VAULT_VERSION), spire $(SPIRE_VERSION), etcd $(ETCD_VERSION), oidc $(OIDC_VERSION), $$(ls -d /usr/lib/postgresql/*/bin | tail -1), $$(chromium --version)"

# Vault, SPIRE and etcd are built from the Go module proxy in modules of
# their own (tools/vault, tools/spire, tools/etcd) so their dependency graphs
# stay out of latch's go.mod. The first Vault build takes 5-12 minutes on 2
# cores.
$(VAULT):
	@echo "building Vault $(VAULT_VERSION) (first time only, 5-12 minutes) ..."
	cd tools/vault && $(GO) build -trimpath -ldflags "-s -w" -o $@ github.com/hashicorp/vault

$(SPIRE_SERVER) $(SPIRE_AGENT):
	@echo "building $(notdir $@) $(SPIRE_VERSION) (first time only) ..."
	cd tools/spire && $(GO) build -trimpath \
		-ldflags "-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=$(SPIRE_VERSION)" \
		-o $@ github.com/spiffe/spire/cmd/$(notdir $@)

$(ETCD):
	@echo "building etcd $(ETCD_VERSION) (first time only) ..."
	cd tools/etcd && $(GO) build -trimpath -ldflags "-s -w" -o $@ go.etcd.io/etcd/server/v3

# The OpenID Provider of the browser tests: zitadel/oidc's certified
# provider library with users from a file (tools/oidc). Rebuilt when its
# source changes.
$(OIDC): tools/oidc/main.go tools/oidc/go.mod tools/oidc/go.sum
	@echo "building the test OpenID Provider ($(OIDC_VERSION)) ..."
	cd tools/oidc && $(GO) build -trimpath -ldflags "-s -w" -o $@ .

$(MCP_TS)/node_modules/.package-lock.json: $(MCP_TS)/package-lock.json
	cd $(MCP_TS) && npm ci --no-audit --no-fund

chromium: ## Install Chromium from Debian when missing (the console's browser tests drive it headless)
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing Chromium from Debian ..."; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

clients: ## Install curl and Python 3 from Debian when missing (the README's API examples are run as printed)
	@if ! command -v curl >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then \
		echo "installing curl and python3 from Debian ..."; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y curl python3; \
	fi

postgres: ## Install PostgreSQL from Debian when its server binaries are missing
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
		echo "installing PostgreSQL from Debian ..."; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	fi

demo: tools build ## Run latch end to end on a real Vault, SPIRE and PostgreSQL, then stop everything
	$(GO) run ./integration/stack/stackctl demo bin/latch

demo-ha: tools build ## Two latch replicas on a 3-member etcd cluster: one killed -9, the agent keeps getting credentials
	$(GO) run ./integration/stack/stackctl demo-ha bin/latch

up: tools ## Start the same stack and keep it running until Ctrl-C
	$(GO) run ./integration/stack/stackctl up

bench: tools ## Run every benchmark (integration benchmarks use the real stack)
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./...

profile: tools ## CPU and allocation profiles of latch serving BenchmarkIssue_LatchJWT (server.pprof), in test-output/profile/
	LATCH_BENCH_PROFILE=$(CURDIR)/test-output/profile $(GO) test -run '^$$' -bench 'Issue_LatchJWT$$' -benchtime 15000x -count=1 ./integration/server/
	$(GO) tool pprof -top -nodecount=40 test-output/profile/issue.cpu.pprof
	$(GO) tool pprof -top -nodecount=25 -sample_index=alloc_space -base test-output/profile/issue.allocs.before.pprof test-output/profile/issue.allocs.pprof

bench-pinned: tools ## Issuance vs Vault JWT login with Vault pinned to CPU 0 and latch to CPU 1 (taskset)
	LATCH_BENCH_PIN=1 $(GO) test -run '^$$' -bench 'Issue_LatchJWT$$|VaultJWTLogin|VaultTokenCreate|Overhead' -count=1 ./integration/server/

migrate-100k: tools ## latch store migrate of a bbolt file with 100,000 leases into etcd, then every read compared (about 2 minutes)
	LATCH_MIGRATE_LEASES=100000 $(GO) test -count=1 -v -run '^TestStore_Migrate$$' ./integration/server/

stress: ## Race an operator's stop against requests in flight: the controls' tests, -race -count=50
	$(GO) test -race -count=50 -run '^TestControls_' ./broker/

fuzz: ## Run every fuzz target for FUZZTIME each (default 30s)
	@for pkg in $$($(GO) list ./... | grep -v /integration); do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$target"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean: ## Remove bin/ and test output (keeps .tools/, which is slow to rebuild)
	rm -rf bin/ coverage.out *.test test-output/

distclean: clean ## Also remove .tools/
	rm -rf $(TOOLS)
