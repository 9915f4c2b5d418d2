#!/usr/bin/env bash
# Builds the pinned upstream binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, kwok, helm, the real node's kubelet and kube-proxy, and kine)
# from Go modules into the cache directory printed by `build.sh --print-dir`.
# Each group is built only when one of its binaries is missing, so a cache made
# before a group was added gains it without rebuilding the rest.
# Nothing is downloaded except Go modules through the module proxy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$here/versions.env"

pins="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
cache_root="${VCLUSTER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vcluster}"
out="$cache_root/$pins/bin"
plane_bins=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm)
node_bins=(kubelet kube-proxy)

if [ "${1:-}" = "--print-dir" ]; then echo "$out"; exit 0; fi

missing() { local b; for b in "$@"; do [ -x "$out/$b" ] || return 0; done; return 1; }
# kine is not in the directory's key: its version is recorded beside it.
kine_missing() { [ -x "$out/kine" ] && [ "$(cat "$out/kine.version" 2>/dev/null)" = "$KINE_VERSION" ] && return 1; return 0; }
if ! missing "${plane_bins[@]}" "${node_bins[@]}" && ! kine_missing; then echo "upstream binaries present in $out"; exit 0; fi

"$here/gen-gomod.sh" check

export GOFLAGS="-buildvcs=false -trimpath"
export GOTOOLCHAIN=local  # never download a Go toolchain
export CGO_ENABLED=0
stage="$cache_root/$pins/bin.partial"
rm -rf "$stage"; mkdir -p "$stage"
# Keep what is already built; only the missing groups are built below.
if [ -d "$out" ]; then cp -a "$out/." "$stage/"; fi
start=$(date +%s)

kv="${KUBERNETES_VERSION}"
minor="${kv#v1.}"; minor="${minor%%.*}"
kflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kflags+=" -X $p.gitVersion=$kv -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

built=()
if missing "${plane_bins[@]}"; then
  echo "building kube-apiserver, kube-controller-manager, kube-scheduler $kv and etcd $ETCD_VERSION (cold: about 6 min on 2 cores)"
  (cd "$here" && go build -ldflags "-s -w $kflags" -o "$stage/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
  (cd "$here" && go build -ldflags "-s -w" -o "$stage/etcd" go.etcd.io/etcd/server/v3)

  # kwok and helm have no replace directives: install them at their pinned versions,
  # each with its own dependency graph (their k8s.io versions differ from ours).
  echo "building kwok $KWOK_VERSION and helm $HELM_VERSION"
  GOBIN="$stage" go install -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  GOBIN="$stage" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  built+=("${plane_bins[@]}")
fi

if missing "${node_bins[@]}"; then
  # The real node (`vcluster dev up --real-nodes N`): from the same wrapper module,
  # so the kubelet's version is the control plane's.
  echo "building kubelet and kube-proxy $kv (about 1 min after the control plane, 6-9 min cold)"
  (cd "$here" && go build -ldflags "-s -w $kflags" -o "$stage/" \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy)
  built+=("${node_bins[@]}")
fi

if kine_missing; then
  # Pure Go (CGO off: kine's SQLite driver is then modernc.org/sqlite).
  echo "building kine $KINE_VERSION (about 6 CPU-minutes cold, 3-4 min on 2 idle cores)"
  rm -f "$stage/kine" "$stage/kine.version"
  GOBIN="$stage" go install -ldflags "-s -w -X github.com/k3s-io/kine/pkg/version.Version=$KINE_VERSION" \
    "github.com/k3s-io/kine@$KINE_VERSION"
  echo "$KINE_VERSION" > "$stage/kine.version"
  built+=(kine)
fi

for b in "${plane_bins[@]}" "${node_bins[@]}" kine; do
  [ -x "$stage/$b" ] || { echo "build.sh: $b was not built" >&2; exit 1; }
done
rm -rf "$out"; mv "$stage" "$out"
echo "built ${built[*]} into $out in $(( $(date +%s) - start ))s"
