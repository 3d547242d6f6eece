# tests/e2e/e2e_lib.sh - shared by the shell e2e tests (sourced): TAP helpers,
# and a base of 21 free ports in a row for a private `./shop up` stack.

n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else not_ok "$what"; fi; }
diag() { sed 's/^/# /'; }

port_taken() { [ -n "$(ss -ltnH "( sport = :$1 )" 2>/dev/null)" ]; }

# Prints a base with 21 free ports in a row, away from the defaults and below
# the kernel's ephemeral range (32768-60999 here), where any outgoing connection
# could take a port between the check and the bind.  Fails when none is found.
free_port_base() {
  local lo_eph slots b free o
  lo_eph=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  slots=$(( (lo_eph - 21000 - 50) / 50 ))
  for _ in $(seq 1 50); do
    b=$((21000 + (RANDOM % slots) * 50)); free=1
    for o in $(seq 0 20); do port_taken $((b + o)) && { free=0; break; }; done
    [ "$free" = 1 ] && { echo "$b"; return 0; }
  done
  return 1
}
