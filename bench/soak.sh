#!/usr/bin/env bash
# The long soak (issue 12): the same test ./test runs for 2 minutes (tests/Kit.EndToEnd.Tests/Soak/SoakTests.cs),
# here for 30 minutes: `kit net run` under a mixed load (short HTTP fetches, 8 MiB transfers checked by MD5, DNS
# through a loopback upstream, UDP echoes) while a DataKit client commits in a loop to `kit data serve`; RSS and
# descriptors of both kit processes sampled every second. Prints the samples table, the verdict and every sample.
# Root only (network namespaces, TAP). Traffic goes only to 127.0.0.1 and the namespace the test creates.
# Usage: [KIT_SOAK_SECONDS=N] [KIT_SOAK_MAX_SLOPE=MiB/min] [KIT_SOAK_FD_MARGIN=N] [KIT_EXE=path] bench/soak.sh
# Build first: dotnet build tests/Kit.EndToEnd.Tests -c Release; ./kit --version (the NativeAOT kit ./test runs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export KIT_SOAK_SECONDS=${KIT_SOAK_SECONDS:-1800}
tests=artifacts/bin/Kit.EndToEnd.Tests/release/Kit.EndToEnd.Tests
[ -x "$tests" ] || { echo "build first: dotnet build tests/Kit.EndToEnd.Tests -c Release" >&2; exit 1; }
# The shipping kit when it is built (as ./test does), else the JIT-ted kit beside the tests.
if [ -z "${KIT_EXE:-}" ] && [ -x artifacts/kit/kit ]; then
  export KIT_EXE="$root/artifacts/kit/kit"
fi
out=$(mktemp -d /tmp/kit-soak.XXXXXX)
export KIT_SOAK_CSV="$out/samples.csv"
echo "soak: ${KIT_SOAK_SECONDS} s, kit ${KIT_EXE:-$tests/../kit}, $(nproc) cores, $(date -u +%FT%TZ); samples in $KIT_SOAK_CSV"
start=$(date +%s)
status=0
# The test prints its report on the console when it passes, and in its failure message when it fails.
"$tests" -method Kit.EndToEnd.Tests.Soak.SoakTests.MixedLoadAndCommitsKeepMemoryAndDescriptorsFlat \
  -noColor -noLogo -result-xml "$out/result.xml" 2>&1 | tee "$out/soak.log" || status=$?
echo "soak: finished in $(( $(date +%s) - start )) s"
if [ -s "$KIT_SOAK_CSV" ]; then
  echo "every sample (t_s, then rss, anon, file KiB, threads, fds for kit net run and for kit data serve): $KIT_SOAK_CSV ($(($(wc -l < "$KIT_SOAK_CSV") - 1)) rows)"
fi
if grep -q 'Failed: 0,' "$out/soak.log" && grep -q 'Total: 1,' "$out/soak.log"; then
  echo "verdict: PASS"
else
  echo "verdict: FAIL (see the problems listed above)"; status=1
fi
exit $status
