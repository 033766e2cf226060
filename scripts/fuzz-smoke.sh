#!/usr/bin/env bash
# Short fuzzing run of every target in fuzz/ (libFuzzer through cargo-fuzz, single process).
#
# Needs the nightly toolchain (`cargo +nightly`) and cargo-fuzz. Without them it prints
# "skipped: ..." and exits 0. It installs nothing unless TOFU_FUZZ_INSTALL=1, which allows
# `cargo install cargo-fuzz --locked` (the nightly toolchain is never installed here).
#
# Environment:
#   TOFU_FUZZ_SECONDS  seconds per target (default 30)
#   TOFU_FUZZ_TARGETS  space-separated targets (default: all of `cargo fuzz list`)
#   TOFU_FUZZ_INSTALL  1 = install cargo-fuzz if it is missing
#
# New corpus entries go to fuzz/corpus/<target> (untracked); the committed seeds in
# fuzz/seeds/<target> are only read. A crash fails the script; the input is kept in
# fuzz/artifacts/<target>/ and the command to replay it is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${TOFU_FUZZ_SECONDS:-30}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz-smoke: skipped: nightly/cargo-fuzz not installed (no nightly toolchain)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "${TOFU_FUZZ_INSTALL:-0}" = "1" ]; then
        echo "fuzz-smoke: installing cargo-fuzz (TOFU_FUZZ_INSTALL=1)"
        cargo install cargo-fuzz --locked
    else
        echo "fuzz-smoke: skipped: nightly/cargo-fuzz not installed (no cargo-fuzz; TOFU_FUZZ_INSTALL=1 installs it)"
        exit 0
    fi
fi

targets="${TOFU_FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

echo "fuzz-smoke: building targets"
cargo +nightly fuzz build

failed=()
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    corpora=("fuzz/corpus/$t")
    if [ -d "fuzz/seeds/$t" ]; then
        corpora+=("fuzz/seeds/$t")
    fi
    log="$logs/$t.log"
    echo "fuzz-smoke: $t for ${seconds}s"
    if cargo +nightly fuzz run "$t" "${corpora[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        # The libFuzzer summary line: runs, coverage, corpus, exec/s.
        grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || tail -n 3 "$log"
    else
        echo "fuzz-smoke: $t FAILED; end of its log:"
        tail -n 60 "$log"
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: failures in: ${failed[*]} (inputs in fuzz/artifacts/<target>/;" \
        "replay with: cargo +nightly fuzz run <target> <input>)"
    exit 1
fi
echo "fuzz-smoke: all targets ran ${seconds}s without a finding"
