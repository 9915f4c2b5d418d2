#!/usr/bin/env bash
# Builds the pinned upstream binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, kwok (one change: see below), helm, the real node's kubelet and
# kube-proxy, and kine)
# from Go modules into the cache directory printed by `build.sh --print-dir`.
# Each group is built only when one of its binaries is missing, so a cache made
# before a group was added gains it without rebuilding the rest.
# Nothing is downloaded except Go modules through the module proxy.
#
# `build.sh --shared [cert-manager] [dex] [traefik]` (default all three, in that order) builds
# instead the services the e2e suites run beside the planes (cert-manager's controllers with its
# CRDs; Dex, the OpenID provider of e2e_sso; traefik): each from a wrapper module of its own
# (e2e/kube/cert-manager, e2e/kube/dex, e2e/kube/traefik), each recorded by version beside it
# like kine, so none enters the cache key nor rebuilds anything else.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$here/versions.env"

pins="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
cache_root="${VCLUSTER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vcluster}"
out="$cache_root/$pins/bin"
plane_bins=(kube-apiserver kube-controller-manager kube-scheduler etcd helm)
node_bins=(kubelet kube-proxy)

if [ "${1:-}" = "--print-dir" ]; then echo "$out"; exit 0; fi

missing() { local b; for b in "$@"; do [ -x "$out/$b" ] || return 0; done; return 1; }
# Binaries not in the directory's key (kine, the shared services): each one's version is
# recorded beside it in <name>.version.
stale() { [ -x "$out/$1" ] && [ "$(cat "$out/$1.version" 2>/dev/null)" = "$2" ] && return 1; return 0; }
kine_missing() { stale kine "$KINE_VERSION"; }
# KWOK as built here: its version and the one change made to its sources (see below).
KWOK_BUILD="$KWOK_VERSION+uid-precondition"
kwok_missing() { stale kwok "$KWOK_BUILD"; }

export GOFLAGS="-buildvcs=false -trimpath"
export GOTOOLCHAIN=local  # never download a Go toolchain
export CGO_ENABLED=0

# Builds one shared service's binary from its wrapper module into $out (written under a
# temporary name, then moved, so an interrupted build leaves nothing half-made).
# usage: build_wrapped NAME VERSION MODULE PACKAGE DIR [go build flags...]
build_wrapped() {
  local name=$1 version=$2 module=$3 pkg=$4 dir=$5; shift 5
  local pinned
  pinned=$(cd "$dir" && go list -m -f '{{.Version}}' "$module")
  [ "$pinned" = "$version" ] || {
    echo "build.sh: $dir/go.mod requires $module $pinned, versions.env says $version (cd $dir && go get $module@$version && go mod tidy)" >&2
    exit 1
  }
  local t0 c0
  t0=$(date +%s); c0=$(cpu_seconds)
  (cd "$dir" && go build "$@" -o "$out/.$name.partial" "$pkg")
  mv "$out/.$name.partial" "$out/$name"
  echo "$version" > "$out/$name.version"
  echo "built $name $version in $(( $(date +%s) - t0 ))s wall, $(( $(cpu_seconds) - c0 )) CPU-s"
}
# In the scratch wrapper $scratch: module $1 becomes a copy of the version the wrapper resolves,
# in ./$2, with the overlay file $4 written to $3 in it.
patched() {
  local src
  # `go list -m` names no directory for a module not in the module cache yet (a cold cache).
  (cd "$scratch" && go mod download "$1")
  src=$(cd "$scratch" && go list -m -f '{{.Dir}}' "$1")
  [ -n "$src" ] || { echo "build.sh: no source directory for $1 after go mod download" >&2; exit 1; }
  cp -r "$src" "$scratch/$2"; chmod -R u+w "$scratch/$2"
  cp "$4" "$scratch/$2/$3"
  (cd "$scratch" && go mod edit -replace "$1=./$2")
}
# CPU seconds used so far by this script's finished children (user + system).
cpu_seconds() { awk '{ print int(($16 + $17) / 100) }' /proc/$$/stat; }

if [ "${1:-}" = "--shared" ]; then
  [ -d "$out" ] || { echo "build.sh --shared: $out missing: run \`make kube-bins\` first" >&2; exit 1; }
  shift
  groups=" ${*:-cert-manager dex traefik} "
  for g in $groups; do
    case "$g" in cert-manager|dex|traefik) ;; *) echo "build.sh --shared: unknown group $g (cert-manager, dex, traefik)" >&2; exit 2 ;; esac
  done
  wants() { [[ "$groups" == *" $1 "* ]]; }
  # One build of a group at a time: `make e2e` starts them in the background while the first
  # suites run, and the suites' own calls wait here for what they need, then find it built.
  mkdir -p "$cache_root/$pins/locks"
  exec 8>"$cache_root/$pins/locks/cert-manager" 9>"$cache_root/$pins/locks/traefik" 7>"$cache_root/$pins/locks/dex"
  if wants cert-manager; then flock 8; fi
  if wants cert-manager && stale cert-manager-controller "$CERT_MANAGER_VERSION"; then
    echo "building cert-manager's controllers $CERT_MANAGER_VERSION"
    build_wrapped cert-manager-controller "$CERT_MANAGER_VERSION" github.com/cert-manager/cert-manager \
      . "$here/cert-manager" -ldflags "-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$CERT_MANAGER_VERSION"
  fi
  # The CRDs of the same release, as its module ships them.
  crds="$out/cert-manager-crds"
  if wants cert-manager && [ "$(cat "$crds/version" 2>/dev/null)" != "$CERT_MANAGER_VERSION" ]; then
    src=$(cd "$here/cert-manager" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
    rm -rf "$crds.partial"; mkdir -p "$crds.partial"
    cp "$src"/deploy/crds/*.yaml "$crds.partial/"
    echo "$CERT_MANAGER_VERSION" > "$crds.partial/version"
    rm -rf "$crds"; mv "$crds.partial" "$crds"
  fi
  flock -u 8
  if wants dex; then flock 7; fi
  if wants dex && stale dex "$DEX_VERSION"; then
    # Dex's static passwords carry no groups: the scratch copy's cmd/dex gains the project's
    # staticUsers connector (e2e/kube/dex/overlay: users with passwords and groups, for the
    # password grant). CGO off: Dex's SQLite storage needs cgo, so a stand-in of the overlay
    # that refuses to open takes its place (e2e_sso runs Dex on its memory storage).
    echo "building dex $DEX_VERSION"
    scratch="$cache_root/$pins/dex-src"
    rm -rf "$scratch"; mkdir -p "$scratch"
    cp "$here/dex/go.mod" "$here/dex/go.sum" "$scratch/"
    patched github.com/dexidp/dex dex cmd/dex/zz_static_users.go "$here/dex/overlay/static_users.go.in"
    cp "$here/dex/overlay/sqlite_nocgo.go.in" "$scratch/dex/storage/sql/sqlite_nocgo.go"
    build_wrapped dex "$DEX_VERSION" github.com/dexidp/dex github.com/dexidp/dex/cmd/dex "$scratch" \
      -ldflags "-s -w -X main.version=$DEX_VERSION"
    rm -rf "$scratch"
  fi
  flock -u 7
  if wants traefik; then flock 9; fi
  if wants traefik && stale traefik "$TRAEFIK_VERSION"; then
    # Two modules traefik builds with are not served whole by the proxy: lego's generated list
    # of DNS-01 providers imports SDK modules it does not serve, and traefik's fork of
    # go-http-auth is missing (the original stands in, lacking one method). Build from a scratch
    # copy of the wrapper in which each is a copy of the pinned module with one file of
    # e2e/kube/traefik/overlay put in (no DNS-01 providers; the missing method; named .go.in
    # there, outside the wrapper module's packages).
    echo "building traefik $TRAEFIK_VERSION"
    scratch="$cache_root/$pins/traefik-src"
    rm -rf "$scratch"; mkdir -p "$scratch"
    cp -r "$here/traefik/go.mod" "$here/traefik/go.sum" "$here/traefik/ext" "$scratch/"
    patched github.com/go-acme/lego/v5 lego providers/dns/zz_gen_dns_providers.go "$here/traefik/overlay/lego_dns_providers.go.in"
    patched github.com/abbot/go-http-auth go-http-auth stale.go "$here/traefik/overlay/go_http_auth_stale.go.in"
    build_wrapped traefik "$TRAEFIK_VERSION" github.com/traefik/traefik/v3 \
      github.com/traefik/traefik/v3/cmd/traefik "$scratch" \
      -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION"
    rm -rf "$scratch"
  fi
  flock -u 9
  echo "shared services (${*:-cert-manager dex traefik}) present in $out"
  exit 0
fi

if ! missing "${plane_bins[@]}" "${node_bins[@]}" && ! kwok_missing && ! kine_missing; then echo "upstream binaries present in $out"; exit 0; fi

"$here/gen-gomod.sh" check
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

  # helm has no replace directives: installed at its pinned version, with its own
  # dependency graph (its k8s.io versions differ from ours).
  echo "building helm $HELM_VERSION"
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

if kwok_missing; then
  # KWOK deletes a pod by name alone; a delete stage played late on a pod already gone (its
  # queue lags under a burst) then deletes a new pod of the same name, which a kubelet never
  # does (it deletes with the pod's uid as a precondition). Built from a scratch copy of the
  # pinned module in which that call takes the uid precondition of
  # e2e/kube/kwok/overlay/zz_delete_precondition.go.in; own dependency graph (its go.mod).
  echo "building kwok $KWOK_VERSION, pod deletes with a uid precondition"
  rm -f "$stage/kwok" "$stage/kwok.version"
  scratch="$cache_root/$pins/kwok-src"
  rm -rf "$scratch"; mkdir -p "$scratch"
  src=$(cd "$scratch" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || { echo "build.sh: no source directory for kwok $KWOK_VERSION after go mod download" >&2; exit 1; }
  cp -r "$src/." "$scratch/"; chmod -R u+w "$scratch"
  ctl="$scratch/pkg/kwok/controllers"
  sed -i 's/Pods(pod.Namespace).Delete(ctx, pod.Name, deleteOpt)/Pods(pod.Namespace).Delete(ctx, pod.Name, podDeleteOptions(pod))/' "$ctl/pod_controller.go"
  grep -q 'podDeleteOptions(pod)' "$ctl/pod_controller.go" || {
    echo "build.sh: kwok $KWOK_VERSION's pod delete call is not where the uid precondition goes" >&2; exit 1
  }
  cp "$here/kwok/overlay/zz_delete_precondition.go.in" "$ctl/zz_delete_precondition.go"
  (cd "$scratch" && go build -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    -o "$stage/.kwok.partial" ./cmd/kwok)
  mv "$stage/.kwok.partial" "$stage/kwok"
  echo "$KWOK_BUILD" > "$stage/kwok.version"
  rm -rf "$scratch"
  built+=(kwok)
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

for b in "${plane_bins[@]}" "${node_bins[@]}" kwok kine; do
  [ -x "$stage/$b" ] || { echo "build.sh: $b was not built" >&2; exit 1; }
done
rm -rf "$out"; mv "$stage" "$out"
echo "built ${built[*]} into $out in $(( $(date +%s) - start ))s"
