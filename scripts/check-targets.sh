#!/usr/bin/env bash
# `cargo check --all-targets` for Unix systems this machine cannot run: macOS (x86_64 and
# aarch64) and FreeBSD. std for each is built from source with nightly's -Zbuild-std (as the
# Windows lane does); a check needs no linker. This is what backs "any Unix" for the poll
# backend and src/sys/net/unix.rs: it compiles there, it has not run there. Without the `tls`
# feature: ring (rustls's crypto) compiles C, and there is no C compiler for these targets
# here; TLS is built and tested on Linux and in the Windows lane.
# Installs nightly's rust-src component when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(x86_64-apple-darwin aarch64-apple-darwin x86_64-unknown-freebsd)
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "check-targets: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if [ ! -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library" ]; then
  rustup component add --toolchain nightly rust-src
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cross}
for t in "${targets[@]}"; do
  echo "check-targets: $t"
  cargo +nightly check --quiet -Zbuild-std --target "$t" --all-targets
done
echo "check-targets: ok (${targets[*]})"
