# sluice — build, test, demo and bench. Every target installs what it needs
# on a fresh Debian machine (run as root).
SHELL    := /bin/bash
GO       ?= go
BIN      := bin/sluice
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
# fuzz budgets are execution counts, not durations: with a duration, Go 1.26's
# fuzz coordinator can report "context deadline exceeded" as a failure when
# the deadline lands while a worker is mid-call (go.dev/issue/75804, fixed in
# Go 1.27). Each count takes 10-15 s here. FUZZTIME=10m (or 5000000x) overrides
# all four for a longer run.
FUZZ_REQUEST    ?= 100000x
FUZZ_DOH        ?= 120000x
FUZZ_READANSWER ?= 150000x
FUZZ_LINT       ?= 350000x

# Debian packages the tests and the demo use: WireGuard client tools, the
# resolvers and DNS clients of the e2e network, and packet tools.
TEST_PKGS  := wireguard-tools wireguard-go nftables unbound bind9-dnsutils knot-dnsutils \
              iproute2 iputils-ping curl tcpdump conntrack ca-certificates etcd-server
BENCH_PKGS := dnsperf dnsdist iperf3
# The systemd tier of e2e (e2e/systemd_test.go) builds a Debian root with
# debootstrap and boots it with systemd-nspawn.
SYSTEMD_TEST_PKGS := debootstrap systemd-container

.PHONY: all build deps bench-deps vm-deps test unit fuzz demo bench bench-quick vet clean install uninstall

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sluice

# deps installs missing Debian packages (root only) and Go modules.
deps:
	@missing=""; for p in $(TEST_PKGS) $(SYSTEMD_TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run as root to install)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(GO) mod download

bench-deps: deps
	@missing=""; for p in $(BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# vm-deps prepares the kernel tier (vmtest/): qemu-system-x86 and Debian's
# kernel package (linux-image-amd64's), downloaded once and extracted into
# /var/cache/sluice-test/kernel (SLUICE_VM_KERNEL_DIR overrides).
vm-deps:
	./vmtest/prepare.sh

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

vet:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# test runs every tier: unit tests, kernel tests in fresh network namespaces
# and end-to-end tests with real clients. As root, a privileged test that
# cannot run fails instead of skipping, and any skip fails the run.
test: deps vm-deps vet
	@set -o pipefail; \
	if [ "$$(id -u)" = 0 ]; then export SLUICE_REQUIRE_PRIVILEGED=1; fi; \
	$(GO) test -race -count=1 -timeout 18m -v ./... 2>&1 | tee .test.log | grep -E '^(\s*--- (FAIL|SKIP)|FAIL|ok|panic)' ; \
	status=$${PIPESTATUS[0]}; \
	passed=$$(grep -cE '^\s*--- PASS' .test.log); failed=$$(grep -cE '^\s*--- FAIL' .test.log); skipped=$$(grep -cE '^\s*--- SKIP' .test.log); \
	echo "$$passed passed, $$failed failed, $$skipped skipped"; \
	if [ "$$status" != 0 ]; then echo "tests failed (full log: .test.log)"; exit 1; fi; \
	if [ "$$(id -u)" = 0 ] && [ "$$skipped" != 0 ]; then grep -E -A2 '^\s*--- SKIP' .test.log; echo "running as root, yet tests were skipped"; exit 1; fi
	$(MAKE) --no-print-directory fuzz

unit:
	$(GO) test -race -count=1 -short ./...

# fuzz runs each fuzz target briefly on top of its committed seed corpus.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzRequest$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_REQUEST)) ./dnsproxy
	$(GO) test -run='^$$' -fuzz='^FuzzDoHRequest$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_DOH)) ./dnsproxy
	$(GO) test -run='^$$' -fuzz='^FuzzReadAnswer$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_READANSWER)) ./dnsproxy
	$(GO) test -run='^$$' -fuzz='^FuzzLint$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_LINT)) ./peers

demo: deps build
	./e2e/demo.sh $(BIN)

bench: bench-deps vm-deps build
	./bench/run.sh

bench-quick: bench-deps vm-deps build
	./bench/run.sh --quick

clean:
	rm -rf bin .test.log

# install puts sluice where a daemon lives: the binary, the systemd unit
# (pointing at the installed binary), the example configuration as
# /etc/sluice/sluice.yaml only if there is none yet, a logrotate file, man
# pages and bash/zsh/fish completion generated from the CLI itself.
# DESTDIR stages the tree for packaging (nothing is started then); PREFIX
# moves the binary and the shared files, SYSCONFDIR and UNITDIR the rest.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
UNITDIR    ?= $(SYSCONFDIR)/systemd/system
BINDIR     := $(PREFIX)/bin
DATADIR    := $(PREFIX)/share
MANDIR     := $(DATADIR)/man
CONFIG     := $(SYSCONFDIR)/sluice/sluice.yaml

install: build
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/logrotate.d $(DESTDIR)$(MANDIR)/man1 \
	  $(DESTDIR)$(DATADIR)/bash-completion/completions $(DESTDIR)$(DATADIR)/zsh/site-functions $(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/sluice
	sed -e 's|/usr/local/bin/sluice|$(BINDIR)/sluice|g' -e 's|/etc/sluice/sluice.yaml|$(CONFIG)|g' examples/sluice.service > $(DESTDIR)$(UNITDIR)/sluice.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/sluice.service
	sed -e 's|/usr/local/bin/sluice|$(BINDIR)/sluice|g' examples/sluice.logrotate > $(DESTDIR)$(SYSCONFDIR)/logrotate.d/sluice
	chmod 0644 $(DESTDIR)$(SYSCONFDIR)/logrotate.d/sluice
	install -d -m 0700 $(DESTDIR)$(SYSCONFDIR)/sluice
	@if [ -e $(DESTDIR)$(CONFIG) ]; then echo "kept $(DESTDIR)$(CONFIG) (exists; the example is examples/split.yaml)"; \
	else echo "install -m 0600 examples/split.yaml $(DESTDIR)$(CONFIG)"; install -m 0600 examples/split.yaml $(DESTDIR)$(CONFIG); fi
	rm -f $(DESTDIR)$(MANDIR)/man1/sluice.1 $(DESTDIR)$(MANDIR)/man1/sluice-*.1
	$(BIN) man --dir $(DESTDIR)$(MANDIR)/man1
	$(BIN) completion bash > $(DESTDIR)$(DATADIR)/bash-completion/completions/sluice
	$(BIN) completion zsh > $(DESTDIR)$(DATADIR)/zsh/site-functions/_sluice
	$(BIN) completion fish > $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/sluice.fish
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then echo "systemctl daemon-reload"; systemctl daemon-reload; fi
	@echo "installed; edit $(CONFIG), then: systemctl enable --now sluice"

# uninstall removes what install put there, except the configuration and
# the state (/etc/sluice, /var/lib/sluice): stop and disable the unit first.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/sluice $(DESTDIR)$(UNITDIR)/sluice.service $(DESTDIR)$(SYSCONFDIR)/logrotate.d/sluice \
	  $(DESTDIR)$(MANDIR)/man1/sluice.1 $(DESTDIR)$(MANDIR)/man1/sluice-*.1 \
	  $(DESTDIR)$(DATADIR)/bash-completion/completions/sluice $(DESTDIR)$(DATADIR)/zsh/site-functions/_sluice \
	  $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/sluice.fish
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
