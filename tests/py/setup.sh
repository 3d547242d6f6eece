#!/usr/bin/env bash
# tests/py/setup.sh - create the Python test venv (var/venv) and install
# tests/py/requirements.txt into it from PyPI.
#
#   tests/py/setup.sh                 # no-op when requirements are unchanged
#   tests/py/setup.sh --force         # reinstall
#   var/venv/bin/python -m pytest tests/py -q
#
# Needs python3 with the venv module (Debian: python3-venv). The stamp
# holds a hash of the requirements and of this script; when it matches the
# venv is left alone, so the script is cheap to call before every test run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/var/venv"
stamp="$venv/.shop-stamp"
py="${PYTHON:-python3}"

want="$(cat "$here/requirements.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  echo "setup.sh: venv up to date (${venv#"$root"/})"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  "$py" -m venv "$venv" || {
    echo "setup.sh: '$py -m venv' failed; on Debian: apt-get install -y python3-venv" >&2
    exit 1
  }
fi
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
echo "$want" >"$stamp"
echo "setup.sh: venv ready (${venv#"$root"/}): $("$venv/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^(grpcio|protobuf|opentelemetry-proto)==' | tr '\n' ' ')"
