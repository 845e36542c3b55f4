#!/usr/bin/env bash
# Time-boxed fuzz smoke of every target (issue 9), for .ci/run:
#   scripts/fuzz-smoke.sh            # 10 s per target (11 targets, registry in fuzz/targets/index.ts: about 2 min)
#   FUZZ_SECONDS=3 scripts/fuzz-smoke.sh
# Exits non-zero on a finding; the shrunk input is saved under fuzz/findings/<target>/ (keep it as
# a CI artifact). The regression corpus itself replays in `npm test` (test/hardening/).
# Seeded from the date so every CI run explores new inputs; the seed is printed for replay
# (FUZZ_SEED=<seed> FUZZ_TARGETS=<target> scripts/fuzz-smoke.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_SECONDS="${FUZZ_SECONDS:-10}"
export FUZZ_SEED="${FUZZ_SEED:-$(date +%s)}"
echo "fuzz smoke: ${FUZZ_SECONDS} s per target, seed ${FUZZ_SEED}"
exec npx vitest run --config fuzz/vitest.config.ts fuzz/campaign.fuzz.ts
