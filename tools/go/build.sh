#!/usr/bin/env bash
# tools/go/build.sh - build the Go test tools pinned in tools/go/go.mod
# (Jaeger v2 all-in-one, grpcurl, ghz) and our own k8scheck (tools/go/k8scheck:
# Kubernetes manifests decoded strictly into k8s.io/api types, for tests/deploy)
# into var/tools/bin/ of the repo.
#
#   tools/go/build.sh            # build if go.mod/go.sum changed, else no-op
#   tools/go/build.sh --force    # rebuild regardless of the stamp
#   var/tools/bin/jaeger --config tests/e2e/jaeger-config.yaml
#
# Sources come from the Go module proxy only (go.sum pins every module).
# Builds run under nice -n 19 so a cold build (several minutes on 2 cores,
# mostly Jaeger) does not starve other work. The stamp is a hash of go.mod,
# go.sum, this script and the Go version: when it matches and all binaries
# exist, the script exits at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/var/tools/bin"
stamp="$bin/.stamp"
tools=(
  "jaeger github.com/jaegertracing/jaeger/cmd/jaeger"
  "grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl"
  "ghz github.com/bojand/ghz/cmd/ghz"
  "k8scheck shop-trace/tools/k8scheck"
)

command -v go >/dev/null || { echo "build.sh: go not found in PATH" >&2; exit 1; }
want="$(cat "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}" "$here"/k8scheck/*.go | sha256sum | cut -d' ' -f1) $(go env GOVERSION)"

force=0
[[ "${1:-}" == "--force" ]] && force=1
if [[ $force == 0 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  ok=1
  for t in "${tools[@]}"; do [[ -x "$bin/${t%% *}" ]] || ok=0; done
  if [[ $ok == 1 ]]; then
    echo "build.sh: tools up to date in ${bin#"$root"/}"
    exit 0
  fi
fi

mkdir -p "$bin"
rm -f "$stamp"
cd "$here"
# -mod=mod lets go resolve from go.sum without a vendor dir; -buildvcs=false
# keeps git state out. No -trimpath: compile flags then match what
# `go tool NAME` uses, so both share Go's build cache (only linking differs).
export GOFLAGS="-mod=mod -buildvcs=false"
for t in "${tools[@]}"; do
  name="${t%% *}" pkg="${t#* }"
  start=$SECONDS
  echo "build.sh: building $name ($pkg)"
  nice -n 19 go build -ldflags='-s -w' -o "$bin/$name" "$pkg"
  echo "build.sh: $name done in $((SECONDS - start))s"
done
echo "$want" >"$stamp"
echo "build.sh: tools in ${bin#"$root"/}: $(cd "$bin" && ls | tr '\n' ' ')"
