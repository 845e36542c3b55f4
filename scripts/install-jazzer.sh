#!/usr/bin/env bash
# Installs Jazzer.js (coverage-guided fuzzing, issue 9) into .cache/jazzer/, outside the project's
# package.json, and builds its native libFuzzer addon from source against Debian's libFuzzer. Needs
# no GitHub access: npm registry + apt only. Idempotent: does nothing when the addon is built
# and loads. Needs root (or sudo) on Debian/Ubuntu for the apt packages.
#
#   scripts/install-jazzer.sh          # install / build if missing, then verify
#   scripts/install-jazzer.sh --check  # verify only (exit 1 when missing)
#
# Why not a devDependency: @jazzer.js/fuzzer 4.0.0's prebuilt addon needs glibc 2.38 and
# libstdc++ GLIBCXX_3.4.32 (Debian 12 has 2.36 / 3.4.30); 2.1.0 and older ship sources only, and
# their install script downloads prebuilds from github.com, then falls back to a cmake-js build
# that downloads Code Intelligence's LLVM fork from github.com. Either failure would fail
# `npm install` for the whole project. So the packages are installed here with --ignore-scripts
# and the addon is built with g++ against upstream libFuzzer (libclang-rt-14-dev), with a small
# compatibility layer for the fork's additions (fuzz/jazzer/compat/, see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

JZ_VERSION=2.1.0          # @jazzer.js/core and @jazzer.js/fuzzer (exact)
NAPI_HEADERS=1.9.0        # node-api-headers: node_api.h without a Node source tree
LLVM=14                   # Debian 12: libclang-rt-14-dev
DIR=.cache/jazzer
FUZZER="$DIR/node_modules/@jazzer.js/fuzzer"
ADDON="$FUZZER/build/Release/jazzerjs.node"
STAMP="$DIR/addon.stamp"
LIBFUZZER="/usr/lib/llvm-$LLVM/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a"

# The stamp names everything the addon is built from, so a change to the compat layer rebuilds it.
stamp() {
  cat scripts/install-jazzer.sh fuzz/jazzer/compat/upstream_libfuzzer.cpp fuzz/jazzer/compat/fuzzer/FuzzerDefs.h |
    sha256sum | cut -d' ' -f1
}

addon_ok() {
  [ -f "$ADDON" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp)" ] &&
    [ -x "$DIR/node_modules/.bin/jazzer" ] &&
    node -e "const a = require('./$ADDON'); if (typeof a.startFuzzing !== 'function') process.exit(1)" 2>/dev/null
}

if addon_ok; then
  echo "install-jazzer: @jazzer.js/core $JZ_VERSION with a locally built addon already present in $DIR"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "install-jazzer: Jazzer.js not installed in $DIR (run scripts/install-jazzer.sh)" >&2
  exit 1
fi

# 1. Toolchain and upstream libFuzzer (static, built against libstdc++).
# shellcheck disable=SC2086
if ! ls $LIBFUZZER >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "install-jazzer: need root or sudo to install libclang-rt-$LLVM-dev and g++" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || echo "install-jazzer: apt-get update reported errors, trying the install anyway" >&2
  $SUDO apt-get install -y -qq --no-install-recommends "libclang-rt-$LLVM-dev" g++ >/dev/null
fi
# shellcheck disable=SC2086
LIBFUZZER_A="$(ls $LIBFUZZER | head -n1)"

# 2. The JavaScript packages, without their install scripts (which would go to github.com).
mkdir -p "$DIR"
cat >"$DIR/package.json" <<EOF
{
  "name": "virtio-mmio-jazzer",
  "private": true,
  "description": "Jazzer.js for virtio-mmio, installed by scripts/install-jazzer.sh (not part of the package)",
  "dependencies": {
    "@jazzer.js/core": "$JZ_VERSION",
    "@jazzer.js/fuzzer": "$JZ_VERSION",
    "node-api-headers": "$NAPI_HEADERS"
  }
}
EOF
(cd "$DIR" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error)

# 3. The native addon: the package's C++ sources, plus fuzz/jazzer/compat/, linked with the whole
# upstream libFuzzer archive. One patch: on a finding (the JS side has already printed it and
# dumped the input) exit with the finding's code instead of returning the fork's "stop" value,
# which upstream libFuzzer does not know (it would keep fuzzing).
SRC="$DIR/addon-src"
rm -rf "$SRC"
mkdir -p "$SRC"
cp -r "$FUZZER"/*.cpp "$FUZZER"/*.h "$FUZZER/shared" "$SRC/"
node -e '
  const fs = require("fs");
  const p = process.argv[1];
  let s = fs.readFileSync(p, "utf8");
  const stop = "    gFuzzTarget->deferred.Reject(error.Value());\n    return libfuzzer::RETURN_EXIT;";
  if (!s.includes(stop)) { console.error("install-jazzer: fuzzing_sync.cpp changed, patch does not apply"); process.exit(1); }
  s = s.replace(stop, "    gFuzzTarget->deferred.Reject(error.Value());\n    JazzerUpstreamStop(error.Value());");
  s = s.replace("#include \"fuzzing_sync.h\"",
    "#include \"fuzzing_sync.h\"\n[[noreturn]] void JazzerUpstreamStop(const Napi::Value &error);");
  fs.writeFileSync(p, s);
' "$SRC/fuzzing_sync.cpp"
mkdir -p "$(dirname "$ADDON")"
echo "install-jazzer: building the addon against $LIBFUZZER_A"
g++ -shared -fPIC -O2 -std=c++17 -DNAPI_VERSION=4 -w \
  -Ifuzz/jazzer/compat -I"$DIR/node_modules/node-api-headers/include" -I"$DIR/node_modules/node-addon-api" \
  "$SRC"/*.cpp "$SRC"/shared/*.cpp fuzz/jazzer/compat/upstream_libfuzzer.cpp \
  -Wl,--whole-archive "$LIBFUZZER_A" -Wl,--no-whole-archive -lpthread \
  -o "$ADDON"
stamp >"$STAMP"

if ! addon_ok; then
  echo "install-jazzer: the addon was built but does not load" >&2
  exit 1
fi
echo "install-jazzer: @jazzer.js/core $JZ_VERSION installed in $DIR, addon built against $(basename "$LIBFUZZER_A")"
