#!/usr/bin/env bash
# The layer rules of src/ (README, "Architecture"), checked on the source text:
#   src/proto/   no engine, sys or testing; no sockets, threads, locks, clock reads,
#                platform #[cfg] or unsafe;
#   src/engine/  no platform #[cfg], no unsafe, no OS crates (libc, windows-sys, socket2);
#                the reactor is named only by the engine's constructor (engine/mod.rs);
#   src/sys/     no engine, no testing;
#   src/util/    nothing of the crate;
#   src/recipes/ the public API only (what users can write: no crate::proto, engine, sys,
#                util paths, no unsafe).
# Comment lines and a file's unit tests (from its `#[cfg(test)]` on, tests come last; a whole
# file under `#![cfg(test)]`) are not checked. Prints every violation and fails if there is
# one.
set -euo pipefail
cd "$(dirname "$0")/.."

platform_cfg='cfg!?\((.*[^_a-z])?(unix|windows|target_os|target_family|target_arch|target_env|target_vendor|target_pointer_width)\b'
bad=0

# check DIR DESCRIPTION REGEX: every production line of a .rs file under DIR matching REGEX.
check() {
  local dir=$1 what=$2 re=$3 f hits
  while IFS= read -r f; do
    hits=$(awk '/^#!?\[cfg\(test\)\]/ { exit } { print FILENAME ":" FNR ": " $0 }' "$f" |
      grep -E -v '^[^:]+:[0-9]+: *//' | grep -E -- "$re" || true)
    if [ -n "$hits" ]; then
      printf '%s may not use %s:\n%s\n' "$dir" "$what" "$hits"
      bad=1
    fi
  done < <(find "$dir" -name '*.rs' | sort)
}

check src/proto 'engine, sys or testing' 'crate::(engine|sys|testing)\b'
check src/proto 'sockets, threads or locks' 'std::(net|thread|os)\b|\b(Mutex|RwLock|Condvar|socket2|libc|windows_sys)\b'
check src/proto 'the clock' '\b(Instant|SystemTime)::now\b'
check src/proto 'a platform #[cfg]' "$platform_cfg"
check src/proto 'unsafe' '\bunsafe\b'
check src/engine 'a platform #[cfg]' "$platform_cfg"
check src/engine 'unsafe' '\bunsafe\b'
check src/engine 'the OS crates (go through sys)' '\b(libc|windows_sys|socket2)::'
check src/sys 'engine or testing' 'crate::(engine|testing)\b'
check src/util 'the rest of the crate' 'crate::(proto|engine|sys|testing|fuzzing)\b'
check src/recipes 'the internals (public API only)' 'crate::(proto|engine|sys|util|fuzzing)\b|pub\(crate\)|\bunsafe\b'

# Nothing names the reactor but the engine's constructor (and the reactor itself).
hits=$(grep -RnE 'reactor::|mod reactor' src --include='*.rs' |
  grep -v -E '^src/engine/(mod\.rs|reactor/)' | grep -E -v '^[^:]+:[0-9]+: *//' || true)
if [ -n "$hits" ]; then
  printf 'only src/engine/mod.rs may name the reactor:\n%s\n' "$hits"
  bad=1
fi

if [ $bad -ne 0 ]; then
  echo "check-layers: FAILED"
  exit 1
fi
echo "check-layers: ok (proto, engine, sys, util, recipes)"
