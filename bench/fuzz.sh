#!/usr/bin/env bash
# bench/fuzz.sh TARGET SECONDS: a bounded AFL++ campaign on one Kit.Fuzz target (docs/fuzzing.md).
# Builds tests/Kit.Fuzz, instruments Kit's assemblies with sharpfuzz, runs afl-fuzz -V SECONDS from the seed corpus
# tests/Kit.Fuzz/corpus/TARGET, output under artifacts/fuzz/TARGET; prints execs/s, edges, crashes, hangs.
# The campaign runs as the unprivileged user nobody: a fuzzed session that escaped its sandbox (the host-directory
# server over a temp directory) can then touch nothing of the machine's.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:?usage: bench/fuzz.sh TARGET SECONDS}"
seconds="${2:?usage: bench/fuzz.sh TARGET SECONDS}"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
cd "$root"
command -v afl-fuzz >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq afl++ >/dev/null; }
tools="$root/artifacts/tools/sharpfuzz"
[ -x "$tools/sharpfuzz" ] || dotnet tool install --tool-path "$tools" SharpFuzz.CommandLine --version 2.3.0 >/dev/null
[ -d "tests/Kit.Fuzz/corpus/$target" ] || { echo "no corpus for target $target" >&2; exit 2; }

pub="$root/artifacts/fuzz/publish"
out="$root/artifacts/fuzz/$target"
if [ ! -f "$pub/.instrumented" ] || [ -n "$(find src tests/Kit.Fuzz -name '*.cs' -newer "$pub/.instrumented" | head -1)" ]; then
  rm -rf "$pub"
  dotnet publish tests/Kit.Fuzz/Kit.Fuzz.csproj -c Release -o "$pub" --nologo -v q -clp:ErrorsOnly
  for dll in Kit.NineP Kit.VpnKit Kit.DataKit Kit.HyperKit; do
    "$tools/sharpfuzz" "$pub/$dll.dll" >/dev/null
  done
  touch "$pub/.instrumented"
fi
rm -rf "$out"; mkdir -p "$out"
home="$root/artifacts/fuzz/home"; mkdir -p "$home"
chown -R nobody:nogroup "$out" "$home"
chmod -R a+rX "$pub" "tests/Kit.Fuzz/corpus"
# afl-fuzz also stops on its own at -V; timeout is the backstop.
timeout --kill-after=30 $((seconds + 120)) setpriv --reuid=nobody --regid=nogroup --clear-groups \
  env HOME="$home" DOTNET_CLI_HOME="$home" AFL_SKIP_BIN_CHECK=1 AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 \
  afl-fuzz -i "tests/Kit.Fuzz/corpus/$target" -o "$out" -m none -t 5000 -V "$seconds" -- "$pub/Kit.Fuzz" "$target" \
  >"$out/afl.log" 2>&1 || { echo "afl-fuzz failed; see $out/afl.log" >&2; tail -20 "$out/afl.log" >&2; exit 1; }
stats="$out/default/fuzzer_stats"
get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
hangs=$(find "$out/default/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
echo "target=$target seconds=$seconds execs_done=$(get execs_done) execs_per_sec=$(get execs_per_sec) edges_found=$(get edges_found) bitmap_cvg=$(get bitmap_cvg) corpus_count=$(get corpus_count) crashes=$crashes hangs=$hangs"
