#!/usr/bin/env bash
# The whole test suite: installs what the integration tests need (only when
# missing), then vet, the race-enabled tests, short fuzz runs of every fuzz
# target, and the shipped policies' Rego tests. Run as root for the
# firewall (network namespaces, nftables) tests; set
# QUELL_REQUIRE_INTEGRATION=1 to make a missing piece fail instead of skip.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZTIME="${QUELL_FUZZTIME:-5s}"

echo "== test dependencies"
for dep in scripts/test-deps/*.sh; do
  [ -e "$dep" ] || continue
  echo "-- $dep"
  bash "$dep"
done

echo "== go vet"
go vet ./...

echo "== go test -race"
# -p 2: two cores; integration packages start servers of their own.
set +e
go test -race -count=1 -p 2 -timeout 30m -v ./... >/tmp/quell-test.log 2>&1
status=$?
set -e
grep -vE '^(=== (RUN|PAUSE|CONT)|\s*--- PASS|PASS$|\{")' /tmp/quell-test.log || true
if [ "$status" -ne 0 ]; then
  echo "go test failed (exit $status)"
  exit "$status"
fi

echo "== fuzz ($FUZZTIME per target)"
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "-- $pkg $f"
    go test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" "$pkg" >/tmp/quell-fuzz.log 2>&1 || { cat /tmp/quell-fuzz.log; exit 1; }
  done
done

echo "== rego tests (quell policy test)"
go run ./cmd/quell policy test examples/policies

echo "== summary"
passed=$(grep -c -- '--- PASS' /tmp/quell-test.log || true)
failed=$(grep -c -- '--- FAIL' /tmp/quell-test.log || true)
skipped=$(grep -c -- '--- SKIP' /tmp/quell-test.log || true)
echo "go tests: $passed passed, $failed failed, $skipped skipped"
