# vcluster: the two set-up commands are `make dev` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
STATE_DIR ?= .vcluster-dev

.PHONY: dev test kube-bins kube-mod build prereqs fmt-check clippy unit e2e down status clean bench faults fuzz fuzz-short fuzz-tools

## dev: build what is missing, then run the host and virtual control planes (Ctrl-C stops them)
dev: prereqs kube-bins build
	./target/debug/vcluster dev up --state-dir $(STATE_DIR)

## test: everything CI checks
test: prereqs kube-bins fmt-check clippy unit fuzz-short e2e

prereqs:
	@command -v go >/dev/null || { echo "make: the Go toolchain (1.26+) is required to build the pinned control-plane binaries"; exit 1; }
	@command -v $(CARGO) >/dev/null || { echo "make: the Rust toolchain (cargo, stable 1.89+) is required"; exit 1; }
	@command -v kubectl >/dev/null || { echo "make: kubectl is required on PATH (the end-to-end tests use it as a client)"; exit 1; }

## kube-bins: build the pinned upstream binaries into ~/.cache/vcluster/<pins>/bin (once)
kube-bins:
	e2e/kube/build.sh

## kube-mod: regenerate e2e/kube/go.mod after changing e2e/kube/versions.env
kube-mod:
	e2e/kube/gen-gomod.sh write

build:
	$(CARGO) build --locked

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --lib --bins

e2e:
	e2e/kube/gen-gomod.sh check
	$(CARGO) test --locked --test e2e_smoke
	$(CARGO) test --locked --test e2e_syncer
	$(CARGO) test --locked --test e2e_network
	$(CARGO) test --locked --test e2e_chart
	$(CARGO) test --locked --test e2e_faults
	$(CARGO) test --locked --test e2e_frontdoor

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (libFuzzer on stable Rust:
## RUSTC_BOOTSTRAP=1, no sanitizer); crashes land in fuzz/artifacts/<target>/
FUZZ_SECONDS ?= 120
FUZZ_TARGETS := names route pss ingress_hosts endpoint_policy
fuzz: fuzz-tools
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 || exit 1; \
	done

## fuzz-short: the same for 10 s each (part of `make test`)
fuzz-short:
	$(MAKE) fuzz FUZZ_SECONDS=10

fuzz-tools:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

## faults: the full fault runs (1,000-pod bursts, five syncer kills, API server restarts, compaction, drift)
faults: prereqs kube-bins
	VCLUSTER_FAULTS=full $(CARGO) test --locked --test e2e_faults

## bench: pod-startup latency, virtual against direct (N=1000 for one quick size); writes bench/results and BENCHMARKS.md
N ?= 1000,5000,10000
bench: prereqs kube-bins
	$(CARGO) build --locked --release --bin vcluster --example bench
	./target/release/examples/bench --sizes $(N)

down:
	./target/debug/vcluster dev down --state-dir $(STATE_DIR)

status:
	./target/debug/vcluster dev status --state-dir $(STATE_DIR)

clean:
	$(CARGO) clean
	rm -rf $(STATE_DIR)
