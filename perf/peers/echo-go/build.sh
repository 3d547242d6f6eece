#!/usr/bin/env bash
# perf/peers/echo-go/build.sh - build the grpc-go peer of the gRPC benchmark
# into var/tools/bin/echo-go of the repo.
#
#   perf/peers/echo-go/build.sh           # build if sources changed, else no-op
#   perf/peers/echo-go/build.sh --force   # rebuild regardless of the stamp
#
# Modules come from the Go module proxy (go.sum pins them).  The build runs
# under nice -n 19.  The stamp is a hash of go.mod, go.sum, main.go, this
# script and the Go version.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
bin="$root/var/tools/bin"
out="$bin/echo-go"
stamp="$bin/.echo-go.stamp"

command -v go >/dev/null || { echo "echo-go/build.sh: go not found in PATH" >&2; exit 1; }
want="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1) $(go env GOVERSION)"
if [[ "${1:-}" != "--force" && -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "echo-go/build.sh: ${out#"$root"/} up to date"
  exit 0
fi
mkdir -p "$bin"
rm -f "$stamp"
cd "$here"
GOFLAGS="-mod=mod -buildvcs=false" nice -n 19 go build -trimpath -ldflags='-s -w' -o "$out" .
echo "$want" >"$stamp"
echo "echo-go/build.sh: built ${out#"$root"/}"
