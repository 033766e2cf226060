#!/usr/bin/env bash
# Memory checkers, when a nightly toolchain is installed (rustup toolchain install nightly;
# rustup component add --toolchain nightly miri rust-src):
#  * AddressSanitizer + LeakSanitizer over the library tests and a set of integration tests
#    (real sockets and threads): use-after-free, overflows, leaks;
#  * Miri over the sans-I/O core (wire, message, address, status, pool, protocol): undefined
#    behaviour.
# Usage: scripts/sanitizers.sh [--full]   (--full: every integration test under ASan)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "sanitizers: skipped: no nightly toolchain"
  exit 0
fi
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
tests=(--lib --test connect --test bye --test disconnect --test lifecycle --test accounting --test backpressure --test outbound)
[ "${1:-}" = --full ] && tests=(--lib --tests)
echo "sanitizers: AddressSanitizer (${tests[*]})"
RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" \
  CARGO_TARGET_DIR=target/asan cargo +nightly test --quiet --target "$host" "${tests[@]}"
if cargo +nightly miri --version >/dev/null 2>&1; then
  echo "sanitizers: Miri (sans-I/O core)"
  CARGO_TARGET_DIR=target/miri cargo +nightly miri test --quiet --lib -- \
    wire:: message:: address:: status:: pool:: protocol:: intmap::
else
  echo "sanitizers: Miri skipped: component not installed"
fi
