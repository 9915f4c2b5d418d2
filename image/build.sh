#!/usr/bin/env bash
# `make image`: builds the project's container images without a daemon or a
# registry, as reproducible OCI layouts and tars in target/images/:
#
#   ghcr.io/vcluster-dev/vcluster:<version>     the `vcluster` binary, static (crt-static), CA roots,
#                                               the pinned helm (static Go; init.helmCharts)
#   registry.k8s.io/kube-apiserver:<k8s>         \
#   registry.k8s.io/kube-controller-manager:<k8s> } the chart's `k8s` distro, from the pinned builds
#   registry.k8s.io/etcd:<etcd>-0                /  (make kube-bins)
#   vcluster.dev/pause:1                         the pod sandbox (image/pause.c, static)
#   vcluster.dev/busybox:<version>               Debian's busybox-static with every applet linked
#   vcluster.dev/toolbox:1                       busybox + the machine's kubectl (in-pod API client, tests)
#
# `image/build.sh vcluster|pause|busybox|toolbox|control-plane` builds one group.
# VCLUSTER_IMAGE_BIN=target/debug/vcluster puts that build (with the shared
# libraries it links) in the vcluster image instead of the static release one;
# VCLUSTER_IMAGE_GZIP_LEVEL (default 9) trades size for time.
# The names are the chart's defaults, so an image imported into a node's
# containerd is used by `helm install` as it is (imagePullPolicy IfNotPresent).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="${VCLUSTER_IMAGE_DIR:-$root/target/images}"
work="$out/build"
mkdir -p "$work"
oci() { python3 "$root/image/oci.py" --out "$out" "$@"; }
# shellcheck source=/dev/null
. "$root/e2e/kube/versions.env"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)

want() { [ "$#" = 0 ] || [ -z "${groups:-}" ] || [[ " $groups " == *" $1 "* ]]; }
groups="$*"

if want vcluster; then
  libs=()
  if [ -n "${VCLUSTER_IMAGE_BIN:-}" ]; then
    # A given build (the e2e suites' debug binary: no second, static release
    # build in `make test`), debug info stripped, with the shared libraries it
    # links (glibc's) at their paths. Same image name as the release image.
    bin="$work/vcluster"
    strip --strip-debug -o "$bin" "$VCLUSTER_IMAGE_BIN"
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      libs+=("$(readlink -f "$lib"):$lib:0755")
    done
  else
    # Static on the gnu target (glibc's static libraries come with libc6-dev);
    # --target keeps RUSTFLAGS off build scripts and proc macros.
    triple=$(rustc -vV | sed -n 's/^host: //p')
    case "$triple" in
      *-linux-gnu) ;;
      *) echo "image/build.sh: static build needs a *-linux-gnu host, not $triple" >&2; exit 1 ;;
    esac
    start=$(date +%s)
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release \
      --target "$triple" --bin vcluster
    bin="$root/target/$triple/release/vcluster"
    echo "vcluster built in $(( $(date +%s) - start ))s: $(stat -c %s "$bin") bytes"
    if ldd "$bin" 2>&1 | grep -q '=>'; then
      echo "image/build.sh: $bin links shared libraries:" >&2; ldd "$bin" >&2; exit 1
    fi
  fi
  certs=/etc/ssl/certs/ca-certificates.crt
  [ -f "$certs" ] || { echo "image/build.sh: $certs missing (Debian package ca-certificates)" >&2; exit 1; }
  # The syncer installs init.helmCharts with the helm binary on its PATH: the
  # pinned build of `make kube-bins` (statically linked Go).
  helm="${VCLUSTER_BIN_DIR:-$("$root/e2e/kube/build.sh" --print-dir)}/helm"
  [ -x "$helm" ] || { echo "image/build.sh: $helm missing: run \`make kube-bins\`" >&2; exit 1; }
  file -b "$helm" | grep -q 'statically linked' || { echo "image/build.sh: $helm is not static" >&2; exit 1; }
  oci --name "ghcr.io/vcluster-dev/vcluster:$version" \
    --entrypoint '["/usr/local/bin/vcluster"]' --user 65532:65532 \
    --env PATH=/usr/local/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    "$bin:/usr/local/bin/vcluster:0755" "$helm:/usr/local/bin/helm:0755" \
    "$certs:/etc/ssl/certs/ca-certificates.crt:0644" "${libs[@]}"
fi

if want pause; then
  gcc -static -Os -s -o "$work/pause" "$root/image/pause.c"
  oci --name vcluster.dev/pause:1 --entrypoint '["/pause"]' "$work/pause:/pause:0755"
fi

if want busybox; then
  bb=/bin/busybox
  if ! file -b "$bb" 2>/dev/null | grep -q static && ! ldd "$bb" 2>&1 | grep -q 'not a dynamic'; then
    echo "image/build.sh: $bb is not static: run \`make node-deps\` (Debian busybox-static)" >&2; exit 1
  fi
  bbv=$("$bb" 2>&1 | sed -n 's/^BusyBox v\([0-9.]*\).*/\1/p' | head -1)
  links=()
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || links+=("@link:/bin/$applet:busybox")
  done
  oci --name "vcluster.dev/busybox:$bbv" --cmd '["sh"]' --env PATH=/bin \
    "$bb:/bin/busybox:0755" "${links[@]}"
fi

if want toolbox; then
  # busybox plus the machine's kubectl (static Go): an in-cluster API client
  # for tests that talk to the virtual API from inside a pod.
  kc=$(readlink -f "$(command -v kubectl)")
  file -b "$kc" | grep -q 'statically linked' || { echo "image/build.sh: $kc is not static" >&2; exit 1; }
  links=()
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || links+=("@link:/bin/$applet:busybox")
  done
  oci --name vcluster.dev/toolbox:1 --cmd '["sh"]' --env PATH=/usr/local/bin:/bin \
    /bin/busybox:/bin/busybox:0755 "$kc:/usr/local/bin/kubectl:0755" "${links[@]}"
fi

if want control-plane; then
  bins="${VCLUSTER_BIN_DIR:-$("$root/e2e/kube/build.sh" --print-dir)}"
  for b in kube-apiserver kube-controller-manager etcd; do
    [ -x "$bins/$b" ] || { echo "image/build.sh: $bins/$b missing: run \`make kube-bins\`" >&2; exit 1; }
  done
  for b in kube-apiserver kube-controller-manager; do
    oci --name "registry.k8s.io/$b:$KUBERNETES_VERSION" --entrypoint "[\"/usr/local/bin/$b\"]" \
      --env PATH=/usr/local/bin "$bins/$b:/usr/local/bin/$b:0755"
  done
  oci --name "registry.k8s.io/etcd:${ETCD_VERSION#v}-0" --entrypoint '["/usr/local/bin/etcd"]' \
    --env PATH=/usr/local/bin "$bins/etcd:/usr/local/bin/etcd:0755"
fi

ls -l "$out"/*.tar
