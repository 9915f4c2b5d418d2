# vcluster: the two set-up commands are `make dev` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
STATE_DIR ?= .vcluster-dev

.PHONY: dev test kube-bins shared-bins kube-mod build prereqs fmt-check clippy unit e2e down status clean bench faults node-deps image e2e-realnode e2e-kine e2e-helm-node e2e-walkthrough fuzz fuzz-short fuzz-tools bench-dns bench-wake

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

## shared-bins: the services some e2e suites run beside the planes (e2e_network: cert-manager;
## e2e_sso: Dex; the real-node lane: cert-manager and traefik), built on their own from pinned modules
## (e2e/kube/build.sh --shared), so `make dev` and the other suites never wait for them
shared-bins: kube-bins
	e2e/kube/build.sh --shared

## node-deps: the Debian packages a real node needs (containerd, runc, CNI plugins, iptables/nftables,
## busybox-static for the test image; gcc and libc6-dev for the static pause and vcluster
## binaries); run as root. CI calls it before the tests.
NODE_DEPS := containerd runc containernetworking-plugins iptables nftables conntrack busybox-static iproute2 \
  util-linux gcc libc6-dev file ca-certificates curl
node-deps:
	@if dpkg-query -W -f='$${Status}\n' $(NODE_DEPS) 2>/dev/null | grep -vq 'install ok installed' || \
	    [ "$$(dpkg-query -W -f='$${Status}\n' $(NODE_DEPS) 2>/dev/null | wc -l)" != "$(words $(NODE_DEPS))" ]; then \
	  [ "$$(id -u)" = 0 ] || { echo "make node-deps: run as root (it installs Debian packages: $(NODE_DEPS))"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(NODE_DEPS); \
	else echo "node packages present: $(NODE_DEPS)"; fi

## image: the container images (vcluster, the k8s distro's control plane, pause, busybox) as
## reproducible OCI layouts + tars in target/images/, without a daemon (image/build.sh)
image: kube-bins
	image/build.sh

## e2e-realnode: tenant workloads on a real node (kubelet, containerd, kube-proxy in a network
## namespace of the stack's own); root, the node's packages and images
e2e-realnode: kube-bins
	e2e/kube/build.sh --shared cert-manager traefik
	@$(MAKE) -s node-deps
	image/build.sh pause busybox toolbox
	$(CARGO) test --locked --test e2e_realnode

## e2e-walkthrough: examples/walkthrough.md run block by block (vcluster create, single sign-on
## through Dex, a chart installed by the SSO user) on the real node; the vcluster image holds the
## debug build (no static release build in `make test`); root
e2e-walkthrough: kube-bins
	e2e/kube/build.sh --shared dex
	@$(MAKE) -s node-deps
	$(CARGO) build --locked --bin vcluster
	VCLUSTER_IMAGE_BIN=target/debug/vcluster VCLUSTER_IMAGE_GZIP_LEVEL=1 image/build.sh vcluster control-plane pause busybox
	$(CARGO) test --locked --test e2e_walkthrough

## e2e-helm-node: `helm install` (distro k8s, the images of `make image`) on the real node,
## `vcluster connect`, a tenant pod through it; not in `make test` (it needs the release build)
e2e-helm-node: kube-bins image
	@$(MAKE) -s node-deps
	$(CARGO) test --locked --test e2e_helm_node

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
	$(CARGO) test --locked --lib --bins --example bench

e2e:
	e2e/kube/gen-gomod.sh check
	@# The shared services build at low priority beside the first suites (the CPU they leave
	@# idle); e2e_network's and the real-node lane's own calls wait for what they need.
	mkdir -p target && { nice -n 19 e2e/kube/build.sh --shared > target/shared-bins.log 2>&1 & }
	$(CARGO) test --locked --test e2e_smoke
	$(CARGO) test --locked --test e2e_syncer
	$(CARGO) test --locked --test e2e_storage
	e2e/kube/build.sh --shared cert-manager
	$(CARGO) test --locked --test e2e_network
	$(CARGO) test --locked --test e2e_dns
	$(CARGO) test --locked --test e2e_chart
	$(CARGO) test --locked --test e2e_onboarding
	$(CARGO) test --locked --test e2e_faults
	$(CARGO) test --locked --test e2e_frontdoor
	e2e/kube/build.sh --shared dex
	$(CARGO) test --locked --test e2e_sso
	$(CARGO) test --locked --test e2e_sleep
	$(MAKE) e2e-kine
	$(MAKE) e2e-realnode
	$(MAKE) e2e-walkthrough

## e2e-kine: the syncer's suite again on a host plane whose API server stores in kine + SQLite
## (as k3s hosts do) instead of etcd; the etcd-compaction test is etcd's own and is skipped
e2e-kine: kube-bins
	VCLUSTER_E2E_HOST_DATASTORE=kine $(CARGO) test --locked --test e2e_syncer -- \
	  --skip watch_expiry_by_etcd_compaction_is_survived

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

## faults: the full fault runs (1,000-pod bursts of every synced kind, twenty syncer kills, API server restarts, compaction, drift)
## with the release syncer, the build users run (the reduced run in `make test` uses the debug one)
faults: prereqs kube-bins
	VCLUSTER_FAULTS=full $(CARGO) test --release --locked --test e2e_faults

## bench: pod-startup latency and delete, virtual against direct, RUNS rounds per size N and
## namespace count NS (10: spread; 1: one namespace); writes bench/results and BENCHMARKS.md
N ?= 1000,5000,10000
NS ?= 10,1
RUNS ?= 3
bench: prereqs kube-bins
	$(CARGO) build --locked --release --bin vcluster --example bench
	./target/release/examples/bench --sizes $(N) --namespaces $(NS) --runs $(RUNS)

## bench-dns: the syncer's cluster DNS against CoreDNS's kubernetes plugin (CoreDNS built from its
## pinned module by bench/coredns.sh), DNS_N Services; writes bench/results/dns.md
DNS_N ?= 1000,10000
bench-dns: prereqs kube-bins
	bench/coredns.sh
	$(CARGO) build --locked --release --bin vcluster --example bench
	./target/release/examples/bench --dns --coredns "$$(bench/coredns.sh --print-path)" --sizes $(DNS_N)

## bench-wake: sleep mode's wake latency (first request -> every host pod Running, every virtual
## pod Ready) for WAKE_N pods on the KWOK lane, release build (e2e_sleep's wake run alone)
WAKE_N ?= 1000
bench-wake: prereqs kube-bins
	VCLUSTER_E2E_WAKE_PODS=$(WAKE_N) $(CARGO) test --locked --release --test e2e_sleep -- \
	  --exact wake_latency_of_many_pods 2>&1 | tee target/bench-wake.log
	grep -o 'wake latency, .*' target/bench-wake.log | sed "s/^/$$(date -u +%F) release: /" >> bench/results/wake.md

down:
	./target/debug/vcluster dev down --state-dir $(STATE_DIR)

status:
	./target/debug/vcluster dev status --state-dir $(STATE_DIR)

clean:
	$(CARGO) clean
	rm -rf $(STATE_DIR)
