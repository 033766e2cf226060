#!/usr/bin/env bash
# Cargo's runner for the Windows lane (scripts/test-windows.sh): runs a test executable (or a
# doctest) under Wine.
#
# A Rust test binary exits 0 when its tests pass and 101 when one fails. Any other status is
# Wine failing around the program (seen once in a few dozen runs: an executable with no tests
# at all exiting 1), not a test result: such a run is repeated once, and says so on stderr.
# A failing test (101) is never repeated.
wine "$@"
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 101 ]; then
  echo "[wine-runner] $(basename "$1") exited with $rc (not a test failure, which is 101): running it once more" >&2
  wine "$@"
  rc=$?
fi
exit $rc
