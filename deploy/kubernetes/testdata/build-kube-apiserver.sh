#!/usr/bin/env bash
# Builds a kube-apiserver from the Go module proxy for TestServerSideDryRun:
# k8s.io/kubernetes replaces its staging modules with local paths, so a temp
# module requires it and points each staging module at its published version.
# Usage: build-kube-apiserver.sh OUT_BINARY   (about 7 minutes on 2 cores, cold)
set -euo pipefail
out=$1
version=${KUBE_VERSION:-1.34.4}
staging=0.${version#1.}
[ -x "$out" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
printf 'module kubeapiserverbuild\n\ngo 1.26\n' > go.mod
go get "k8s.io/kubernetes@v$version" >/dev/null
kmod=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)
{
	echo 'replace ('
	sed -n '/^replace (/,/^)/p' "$kmod/go.mod" | awk -v v="v$staging" '/=>/ {print "\t" $1 " => " $1 " " v}'
	echo ')'
} >> go.mod
printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\nfunc main() {}\n' > main.go
go mod tidy >/dev/null
mkdir -p "$(dirname "$out")"
go build -o "$out.tmp" k8s.io/kubernetes/cmd/kube-apiserver
mv "$out.tmp" "$out"
