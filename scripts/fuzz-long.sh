#!/usr/bin/env bash
# The parser property tests (tests/fuzz_parsers.rs) with many more cases than CI runs: every
# parser that reads network input, over arbitrary and near-valid bytes. Takes minutes.
#
#   scripts/fuzz-long.sh                  # 200,000 cases per property
#   PROPTEST_CASES=1000000 scripts/fuzz-long.sh
#   scripts/fuzz-long.sh reader_          # only the properties whose names match
#
# Built with optimisations (the test profile's debug build is ~10x slower per case); a failure
# prints the shrunk input that caused it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-200000}"
started=$(date +%s)
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo test --release --test fuzz_parsers -- "$@" --test-threads "${FUZZ_THREADS:-2}"
echo "fuzz-long: $PROPTEST_CASES cases per property passed in $(( $(date +%s) - started )) s"
