#!/usr/bin/env bash
# Memory checkers, with the nightly toolchain (Miri and rust-src are installed when missing):
#  * AddressSanitizer + LeakSanitizer over the library tests and a set of integration tests
#    (real sockets and threads): use-after-free, overflows, leaks;
#  * Miri over the sans-I/O core (all of src/proto/), src/util/ and the pool: undefined
#    behaviour.
# Usage: scripts/sanitizers.sh [--full]   (--full: every integration test under ASan)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "sanitizers: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "sanitizers: installing Miri"
  rustup component add --toolchain nightly miri rust-src
fi
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
tests=(--lib --test connect --test bye --test disconnect --test lifecycle --test accounting --test backpressure --test outbound)
[ "${1:-}" = --full ] && tests=(--lib --tests)
echo "sanitizers: AddressSanitizer (${tests[*]})"
RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" \
  CARGO_TARGET_DIR=target/asan cargo +nightly test --quiet --target "$host" "${tests[@]}"
echo "sanitizers: Miri (proto::, util::, engine::pool::)"
CARGO_TARGET_DIR=target/miri cargo +nightly miri test --quiet --lib -- proto:: util:: engine::pool::
