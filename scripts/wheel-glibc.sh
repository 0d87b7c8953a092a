#!/usr/bin/env bash
# Prints the highest glibc symbol version the native library of a wheel needs (e.g. GLIBC_2.17),
# or "none" for a library that needs no glibc symbol (a musl wheel). Usage: wheel-glibc.sh WHEEL
set -euo pipefail
wheel="${1:?usage: wheel-glibc.sh WHEEL}"
[ -f "$wheel" ] || { echo "no such wheel: $wheel" >&2; exit 1; }
command -v objdump >/dev/null || { echo "objdump (binutils) is needed" >&2; exit 1; }
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$dir"
libs=$(find "$dir" -name '*.so' -o -name '*.so.*')
[ -n "$libs" ] || { echo "no native library in $wheel" >&2; exit 1; }
# shellcheck disable=SC2086
highest="$(objdump -T $libs | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 || true)"
echo "${highest:-none}"
