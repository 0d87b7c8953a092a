#!/usr/bin/env bash
# Runs a Windows program under wine: cargo's runner for x86_64-pc-windows-gnu (set by
# scripts/windows-test.sh), or by hand: scripts/windows/wine-run.sh program.exe [args].
#
# Wine 8.0 (Debian 12) has no bcryptprimitives.dll, whose ProcessPrng Rust's standard library
# imports: the test-only shim (processprng-shim.c, built here once) is put beside the program.
# It is never part of what we ship: Windows has the real DLL.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
exe="$1"
shift
shim="$root/target/windows/bcryptprimitives.dll"
if [ ! -e "$shim" ] || [ "$root/scripts/windows/processprng-shim.c" -nt "$shim" ]; then
  mkdir -p "$(dirname "$shim")"
  x86_64-w64-mingw32-gcc -shared -O2 -o "$shim" "$root/scripts/windows/processprng-shim.c" -ladvapi32
fi
# Beside the program, and beside the binaries a test in deps/ starts (cargo's debug/).
dir="$(dirname "$exe")"
for d in "$dir" "$(dirname "$dir")"; do
  [ -e "$d/bcryptprimitives.dll" ] || cp "$shim" "$d/"
done
# A prefix of our own (wine creates it at the first run), and no wine debug chatter.
export WINEPREFIX="${WINEPREFIX:-$root/target/windows/wineprefix}"
export WINEDEBUG="${WINEDEBUG:--all}"
exec /usr/lib/wine/wine64 "$exe" "$@"
