#!/usr/bin/env bash
# The operator's view of configuration errors: shop-config check on real files.
# Usage: cli.sh SHOP_CONFIG_BIN   (TAP output)
set -u
bin="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
n=0; failed=0
check() { # check DESCRIPTION COMMAND...
  local d="$1"; shift
  n=$((n+1))
  if "$@"; then echo "ok $n - $d"; else echo "not ok $n - $d"; failed=$((failed+1)); fi
}

printf '[ring]\nlanes = 8\nlane_size = 2M\n' >"$dir/good.conf"
out=$(env -u SHOP_CONFIG "$bin" check --config "$dir/good.conf" 2>&1); rc=$?
check "a good file passes (exit 0)" test $rc -eq 0
check "and says which file it read" grep -q "good.conf: ok" <<<"$out"

printf '[ring]\nlanes = 8\n; comment\nlane_size = 3M\n' >"$dir/bad.conf"
out=$("$bin" check --config "$dir/bad.conf" 2>&1); rc=$?
check "a bad lane_size fails with exit 1" test $rc -eq 1
check "the message names file:line, key, value and range: $out" \
  grep -q "bad.conf:4: \[ring\] lane_size = 3M: must be a power of two between 65536 and 268435456" <<<"$out"

out=$(SHOP_CONFIG="$dir/good.conf" "$bin" get ring.lane_size 2>&1)
check "SHOP_CONFIG picks the file (ring.lane_size = $out)" test "$out" = "2M"

out=$(SHOP_CONFIG="$dir/good.conf" SHOP_RING_LANE_SIZE=4M "$bin" get ring.lane_size 2>&1)
check "the environment overrides the file ($out)" test "$out" = "4M"

out=$(SHOP_CONFIG="$dir/good.conf" OTEL_TRACES_SAMPLER=bogus "$bin" check 2>&1); rc=$?
check "a bad OTEL_TRACES_SAMPLER is refused naming the variable: $out" \
  bash -c "[ $rc -eq 1 ] && grep -q 'environment OTEL_TRACES_SAMPLER=bogus' <<<'$out'"

out=$("$bin" check --config "$dir/missing.conf" 2>&1); rc=$?
check "a missing file is an error naming it" bash -c "[ $rc -ne 0 ] && grep -q missing.conf <<<'$out'"

out=$("$bin" dump --config "$dir/good.conf" 2>&1)
check "dump shows each value's origin" grep -q "ring.lanes = 8  (.*good.conf:2)" <<<"$out"

echo "1..$n"
[ $failed -eq 0 ]
