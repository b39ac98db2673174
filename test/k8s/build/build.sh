#!/usr/bin/env bash
# build.sh — the Kubernetes binaries of tabby's cluster lab, built from the
# Go module proxy with this directory's module and cached:
#
#   test/k8s/build/build.sh [OUTDIR]   (default: $K8S_BIN_DIR or /var/cache/tabby-k8s/<version>)
#
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, kubectl, the upstream e2e suite (e2e.test) and its probe
# program agnhost, ginkgo (its parallel runner), and CoreDNS for cluster DNS. A binary already in OUTDIR
# is kept when OUTDIR's stamp matches this module's go.sum and the CoreDNS
# version (any change of versions rebuilds all), so a warm machine pays
# nothing; a cold one about 15 minutes on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
V=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v1\./{print $2; exit}' "$here/go.mod")
[[ -n $V ]] || { echo "build.sh: no k8s.io/kubernetes version in $here/go.mod" >&2; exit 1; }
OUT=${1:-${K8S_BIN_DIR:-/var/cache/tabby-k8s/$V}}
# Cluster DNS, built from its own module (its dependencies are not
# Kubernetes' and must not be resolved together with them).
COREDNS_V=v1.14.7
stamp=$( (cat "$here/go.sum"; echo "coredns $COREDNS_V") | sha256sum | cut -c1-16)
mkdir -p "$OUT"
if [[ "$(cat "$OUT/.stamp" 2>/dev/null)" != "$stamp" ]]; then
  rm -f "$OUT"/*
fi
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
missing=()
for c in "${cmds[@]}"; do [[ -x $OUT/$c ]] || missing+=("k8s.io/kubernetes/cmd/$c"); done
minor=${V#v1.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
ld="-s -w -X $vpkg.gitVersion=$V -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$V"
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
t0=$(date +%s)
if ((${#missing[@]})); then
  echo "k8s-bins: building ${missing[*]##*/} $V into $OUT" >&2
  go build -trimpath -ldflags "$ld" -o "$OUT/" "${missing[@]}"
fi
if [[ ! -x $OUT/agnhost ]]; then
  echo "k8s-bins: building agnhost" >&2
  go build -trimpath -ldflags "-s -w" -o "$OUT/agnhost" k8s.io/kubernetes/test/images/agnhost
fi
if [[ ! -x $OUT/e2e.test ]]; then
  echo "k8s-bins: building e2e.test" >&2
  go test -c -trimpath -ldflags "$ld" -o "$OUT/e2e.test" k8s.io/kubernetes/test/e2e
fi
if [[ ! -x $OUT/ginkgo ]]; then
  # The suite's own runner, for running e2e.test's specs in parallel.
  echo "k8s-bins: building ginkgo" >&2
  go build -trimpath -ldflags "-s -w" -o "$OUT/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
fi
if [[ ! -x $OUT/coredns ]]; then
  echo "k8s-bins: building coredns $COREDNS_V" >&2
  GOFLAGS= GOBIN="$OUT" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_V"
fi
echo "$stamp" >"$OUT/.stamp"
echo "k8s-bins: $OUT ready ($(( $(date +%s) - t0 )) s)" >&2
