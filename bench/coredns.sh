#!/usr/bin/env bash
# Builds CoreDNS at the version pinned in e2e/kube/versions.env (the peer of
# `make bench-dns`) from its Go module into the cache; `--print-path` prints
# where the binary is. Only the benchmark uses it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=/dev/null
. "$root/e2e/kube/versions.env"
cache_root="${VCLUSTER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vcluster}"
out="$cache_root/coredns-$COREDNS_VERSION"
if [ "${1:-}" = "--print-path" ]; then echo "$out/coredns"; exit 0; fi
if [ -x "$out/coredns" ]; then echo "coredns $COREDNS_VERSION present in $out"; exit 0; fi
echo "building coredns $COREDNS_VERSION (every in-tree plugin, as released; about 10 CPU-minutes cold)"
mkdir -p "$out.partial"
GOFLAGS="-buildvcs=false -trimpath" GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$out.partial" \
  go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
rm -rf "$out"; mv "$out.partial" "$out"
