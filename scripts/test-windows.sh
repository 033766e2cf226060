#!/usr/bin/env bash
# test-windows.sh - build tofu for x86_64-pc-windows-gnu and run its tests under Wine.
#
# Usage:  scripts/test-windows.sh [cargo test args...]
#   e.g.  scripts/test-windows.sh --lib poller
#         scripts/test-windows.sh --test echo -- --nocapture
#
# Works on a fresh Debian 12 (bookworm) as root or with sudo; needs only Debian's archive and
# the crate registry. Idempotent: installs only what is missing, keeps the Wine prefix and the
# build directory between runs, so a warm run only rebuilds what changed.
#
# What it does:
#   1. apt: mingw-w64 (linker, import libraries, dlltool for raw-dylib), Wine 8 (wine64 + the
#      `wine` launcher) and Debian's Rust (rustc-web/cargo-web 1.96 plus rust-web-src, because the
#      rustup toolchain has no Windows std here: std is built from source with -Zbuild-std).
#   2. a headless, quiet Wine prefix in $WINLANE_HOME (default ~/.cache/tofu-winlane).
#   3. bcryptprimitives.dll: Rust std imports ProcessPrng from it and Wine ships it only from
#      9.0 on, so every test executable would die at load time (exit 53, c0000135). A tiny
#      mingw-built DLL forwarding to RtlGenRandom stands in.
#   4. starts this prefix's wineserver and Wine's services with stdio on /dev/null, so that
#      none of them holds a test's output pipe (see there).
#   5. cargo test --target x86_64-pc-windows-gnu -Zbuild-std with Wine as the runner, in
#      CARGO_TARGET_DIR (default target/winlane, apart from the host build in target/).
#   6. stops this prefix's wineserver (and with it services.exe etc.), whatever the result,
#      so nothing keeps running or holds CI's pipes open.
#
# Exit status: cargo's (non-zero when a test fails or the build breaks); 2 on a setup error.
#
# Knobs: WINLANE_HOME, CARGO_TARGET_DIR, WINEDEBUG (default -all), WINLANE_TOOLCHAIN
# (debian, the default; or rustup, if that toolchain already has the x86_64-pc-windows-gnu std),
# WINLANE_CLIPPY=1 (debian toolchain only: first `cargo clippy --all-targets -- -D warnings` for
# the Windows target, with Debian's rust-web-clippy; the host CI never compiles the Windows code).
set -euo pipefail

TARGET=x86_64-pc-windows-gnu
TOOLCHAIN=${WINLANE_TOOLCHAIN:-debian}
LANE_HOME=${WINLANE_HOME:-$HOME/.cache/tofu-winlane}
REPO=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '[test-windows] %s\n' "$*" >&2; }
SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

# --- 1. packages ---------------------------------------------------------------------------
pkgs=(gcc-mingw-w64-x86-64-posix wine64 wine)
if [ "$TOOLCHAIN" = debian ]; then pkgs+=(rustc-web cargo-web rust-web-src); fi
if [ "$TOOLCHAIN" = debian ] && [ "${WINLANE_CLIPPY:-0}" = 1 ]; then pkgs+=(rust-web-clippy); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- 2. Wine prefix ------------------------------------------------------------------------
export WINEPREFIX=${WINEPREFIX:-$LANE_HOME/wineprefix}
export WINEDEBUG=${WINEDEBUG:--all}            # also hides the "wine32 is missing" hint
export WINEDLLOVERRIDES=${WINEDLLOVERRIDES:-mscoree,mshtml=}   # no Mono/Gecko installers
mkdir -p "$LANE_HOME"
stop_wine() { wineserver -k >/dev/null 2>&1 || true; wineserver -w >/dev/null 2>&1 || true; }
trap stop_wine EXIT
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  log "creating the Wine prefix $WINEPREFIX"
  # wineboot reports a harmless error about the missing 32-bit rundll32.
  wine wineboot -i >/dev/null 2>&1 || true
  wineserver -w
fi

# --- 3. bcryptprimitives.dll shim ----------------------------------------------------------
if [ ! -e /usr/lib/x86_64-linux-gnu/wine/x86_64-windows/bcryptprimitives.dll ]; then
  shim=$LANE_HOME/bcryptprimitives.dll
  if [ ! -f "$shim" ]; then
    log "building the bcryptprimitives.dll shim"
    cat >"$LANE_HOME/bcryptprimitives.c" <<'EOF'
/* ProcessPrng for Wine < 9: fill the buffer from advapi32's RtlGenRandom (SystemFunction036). */
#include <windows.h>
#include <ntsecapi.h>
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
EOF
    printf 'LIBRARY bcryptprimitives.dll\nEXPORTS\nProcessPrng\n' >"$LANE_HOME/bcryptprimitives.def"
    x86_64-w64-mingw32-gcc -O2 -s -shared -o "$shim.tmp" \
      "$LANE_HOME/bcryptprimitives.c" "$LANE_HOME/bcryptprimitives.def" -ladvapi32
    mv "$shim.tmp" "$shim"
  fi
  dest=$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll
  cmp -s "$shim" "$dest" || cp "$shim" "$dest"
fi

# --- 4. one wineserver for the whole run ------------------------------------------------------
# Wine's service processes (services.exe, winedevice.exe, ...) inherit the stdio of the wine
# command that starts them. Started by a test executable they would hold cargo's, rustdoc's or
# CI's output pipes open after the test has exited. So: a persistent wineserver (until the
# `wineserver -k` of the exit trap) and its services, started here with stdio on /dev/null.
wineserver -k >/dev/null 2>&1 || true   # a server left by an interrupted run
wineserver -w >/dev/null 2>&1 || true
wineserver -p </dev/null >/dev/null 2>&1
wine cmd /c exit </dev/null >/dev/null 2>&1 || true

# --- 5. cargo test -------------------------------------------------------------------------
cd "$REPO"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
# Wine, repeating once a run that Wine itself failed (see the script); also runs the doctests.
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$REPO/scripts/wine-runner.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target/winlane}
rc=0
case "$TOOLCHAIN" in
  debian)
    # Debian's compiler by absolute path, so rustup's proxies on PATH are bypassed.
    # RUSTC_BOOTSTRAP=1: -Zbuild-std is unstable; it builds std for Windows from rust-web-src.
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
    if [ "${WINLANE_CLIPPY:-0}" = 1 ]; then
      # /usr/bin first, so cargo finds Debian's cargo-clippy and clippy-driver.
      PATH=/usr/bin:$PATH /usr/bin/cargo clippy -Zbuild-std --target "$TARGET" --all-targets \
        -- -D warnings || rc=$?
    fi
    if [ $rc -eq 0 ]; then
      /usr/bin/cargo test -Zbuild-std --target "$TARGET" "$@" || rc=$?
    fi
    ;;
  rustup)
    if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET/lib" ]; then
      log "the rustup toolchain has no $TARGET std; use WINLANE_TOOLCHAIN=debian"
      exit 2
    fi
    cargo test --target "$TARGET" "$@" || rc=$?
    ;;
  *)
    log "unknown WINLANE_TOOLCHAIN=$TOOLCHAIN"
    exit 2
    ;;
esac
if [ $rc -ne 0 ]; then log "FAILED (exit $rc)"; fi
exit $rc
