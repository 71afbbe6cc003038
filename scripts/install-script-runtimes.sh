#!/usr/bin/env bash
# What the scripting operators need on this machine, installed from the distribution when
# missing (idempotent: nothing happens when everything is there):
#   bubblewrap  the default `sandbox` executor of sh>, py> and rb>
#   python3     py> (and the sandbox's own checks)
#   ruby        rb> (the tests run Ruby tasks; pass --no-ruby to skip it)
# Needs root (or sudo) for apt-get; on another distribution, install the same packages.
set -euo pipefail
want_ruby=1
[ "${1:-}" = --no-ruby ] && want_ruby=0

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
[ "$want_ruby" = 1 ] && { command -v ruby >/dev/null 2>&1 || missing+=(ruby); }
[ -x /usr/bin/setpriv ] || missing+=(util-linux)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
echo "install-script-runtimes: installing ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-script-runtimes: no apt-get here; install ${missing[*]} with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
