#!/usr/bin/env bash
# Coverage-guided campaigns with Jazzer.js (issue 9): `npm run fuzz:jazzer`.
#
#   JAZZER_SECONDS=60 fuzz/jazzer/run.sh                 # every target, 60 s each (default)
#   JAZZER_TARGETS=queue,transport JAZZER_SECONDS=5 fuzz/jazzer/run.sh
#   JAZZER_SEED=1 JAZZER_FRESH=1 fuzz/jazzer/run.sh -use_value_profile=1   # extra args go to libFuzzer
#
# Needs scripts/install-jazzer.sh first. Per target: seeds from fuzz/corpus/<target>/ (read only),
# keeps the inputs that found new coverage in .cache/jazzer/corpus/<target>/ (reused by the next run
# unless JAZZER_FRESH=1), writes findings (crash-*, timeout-*, oom-*: the raw input bytes) to
# fuzz/findings/<target>/ and the full libFuzzer log to .cache/jazzer/logs/<target>.log.
# Prints one summary line per target; exits 1 when any target had a finding.
set -uo pipefail
cd "$(dirname "$0")/../.."

DIR=.cache/jazzer
SECONDS_PER_TARGET="${JAZZER_SECONDS:-60}"
if ! bash scripts/install-jazzer.sh --check >/dev/null 2>&1; then
  echo "fuzz:jazzer: Jazzer.js is not installed; run scripts/install-jazzer.sh first" >&2
  exit 2
fi
BUNDLE="$DIR/bundle/entry.cjs"
node fuzz/jazzer/bundle.mjs "$BUNDLE" || exit 2
ALL="$(node -e "console.log(require('./$BUNDLE').targetNames.join(','))")"
TARGETS="${JAZZER_TARGETS:-$ALL}"
for t in ${TARGETS//,/ }; do
  if [[ ",$ALL," != *",$t,"* ]]; then
    echo "fuzz:jazzer: unknown target '$t' (targets: $ALL)" >&2
    exit 2
  fi
done
SEED_ARG=()
if [ -n "${JAZZER_SEED:-}" ]; then SEED_ARG=("-seed=$JAZZER_SEED"); fi

echo "fuzz:jazzer: ${SECONDS_PER_TARGET} s per target: ${TARGETS}"
failed=()
for t in ${TARGETS//,/ }; do
  work="$DIR/corpus/$t"
  if [ "${JAZZER_FRESH:-0}" = 1 ]; then rm -rf "$work"; fi
  mkdir -p "$work" "fuzz/findings/$t" "$DIR/logs"
  seeds=()
  if [ -d "fuzz/corpus/$t" ]; then seeds=("fuzz/corpus/$t"); fi
  log="$DIR/logs/$t.log"
  # --sync: the targets are synchronous (and the addon's stop-on-finding patch covers sync mode).
  JAZZER_TARGET="$t" node "$DIR/node_modules/.bin/jazzer" "$BUNDLE" --sync -- \
    "$work" "${seeds[@]}" "-max_total_time=$SECONDS_PER_TARGET" "-artifact_prefix=fuzz/findings/$t/" \
    -print_final_stats=1 "${SEED_ARG[@]}" "$@" >"$log" 2>&1
  rc=$?
  last="$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n1)"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  cov="$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\)\/.*/cov \1, ft \2, corpus \3/p' <<<"$last")"
  if [ "$rc" -eq 0 ]; then
    echo "jazzer $t: ${runs:-?} executions, ${eps:-?} exec/s, ${cov:-no coverage line} (log $log)"
  else
    failed+=("$t")
    echo "jazzer $t: FINDING (exit $rc) after ${runs:-?} executions, ${cov:-?}; input saved in fuzz/findings/$t/ (log $log)"
    grep -E -A12 'Uncaught Exception|ERROR: libFuzzer|==[0-9]+== ' "$log" | head -n 30
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz:jazzer: findings in ${failed[*]}" >&2
  exit 1
fi
