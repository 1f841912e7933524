#!/usr/bin/env bash
# Installs what the Kubernetes integration tests need, only when missing:
#   - etcd (Debian package etcd-server)
#   - kube-apiserver, built from the k8s.io/kubernetes Go module in a scratch
#     module outside the repo and cached under /var/cache/quell/bin.
# Idempotent: a second run does nothing. The build takes ~7 minutes on 2 cores.
set -euo pipefail

KUBE_VERSION="${QUELL_KUBE_VERSION:-v1.37.2}"
STAGING_VERSION="v0${KUBE_VERSION#v1}"          # v1.37.2 -> v0.37.2
CACHE="${QUELL_KUBE_CACHE:-/var/cache/quell}"
BIN="$CACHE/bin/kube-apiserver-$KUBE_VERSION"

if ! command -v etcd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq etcd-server >/dev/null
  # The package starts a system etcd on 2379; the tests run their own.
  (systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || true)
fi

if [ -x "$BIN" ]; then
  echo "kube-apiserver present: $BIN"
  exit 0
fi

BUILD="$CACHE/kube-build-$KUBE_VERSION"
mkdir -p "$BUILD" "$CACHE/bin"
cd "$BUILD"
cat > go.mod <<MOD
module quellkubebuild

go 1.26
MOD
export GOFLAGS=-mod=mod
go mod download "k8s.io/kubernetes@$KUBE_VERSION"
MODFILE="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.mod"
# k8s.io/kubernetes replaces its staging modules with ./staging/...; a module
# that requires it must replace them with their published versions instead.
{
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  echo "replace ("
  grep -E '=> \./staging/' "$MODFILE" | awk -v v="$STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} >> go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
go mod download all >/dev/null 2>&1 || true
go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" >/dev/null
go build -trimpath -o "$BIN.tmp" k8s.io/kubernetes/cmd/kube-apiserver
mv "$BIN.tmp" "$BIN"
echo "built $BIN"
