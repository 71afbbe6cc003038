#!/usr/bin/env bash
# Copy the Digdag conformance corpus from ../shared/conformance (beside the repository, or
# the folder given as the only argument) into tests/conformance, replacing what is there.
# tests/conformance is an exact copy: the `conformance` test fails when the two differ.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-$repo/../shared/conformance}"
dst="$repo/tests/conformance"
if [ ! -f "$src/run.sh" ] || [ ! -d "$src/cases" ]; then
  echo "sync-conformance: no conformance corpus at $src (expected run.sh and cases/)" >&2
  exit 1
fi
src="$(cd "$src" && pwd)"
tmp="$(mktemp -d "$repo/tests/.conformance-sync.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cp -R "$src/." "$tmp/"
chmod -R u+w "$tmp"          # the shared copy is read-only; keep the working tree writable
rm -rf "$dst"
mv "$tmp" "$dst"
chmod 755 "$dst"             # mktemp made it 700
trap - EXIT
echo "sync-conformance: $(find "$dst/cases" -mindepth 1 -maxdepth 1 -type d | wc -l) cases copied from $src to tests/conformance"
git -C "$repo" status --short -- tests/conformance | head -n 20
