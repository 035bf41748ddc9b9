#!/usr/bin/env bash
# Installs what the VS Code end-to-end test needs, once per machine (idempotent, cached):
#   - Debian packages: chromium, ripgrep, and the tools to build code-server's native modules;
#   - code-server 4.100.3 (VS Code 1.100.3, the last line that runs on Node 20) from the npm
#     registry, without any of the downloads its own postinstall would make (it fetches
#     ripgrep and prebuilt native modules from the internet: here the native modules are built
#     locally with npm's node-gyp, and ripgrep is Debian's);
#   - playwright-core (pinned in tests/vscode/package-lock.json) into tests/vscode/node_modules.
# code-server lives in $DUET_CODE_SERVER_DIR, by default
# ${XDG_CACHE_HOME:-~/.cache}/duet/code-server-4.100.3 (outside the work tree, so a fresh
# clone or `cargo clean` does not pay for it again). Prints that folder on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=4.100.3
dir=${DUET_CODE_SERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/duet/code-server-$version}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in chromium ripgrep libkrb5-dev build-essential python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/vscode/install.sh: apt-get install ${missing[*]}" >&2
  as_root apt-get update -qq
  # Once more on failure: another apt/dpkg run on the machine makes the first one fail.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { sleep 10; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)

stamp=$dir/.duet-installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ] \
  && HOME=$dir/home "$dir/node_modules/.bin/code-server" --version >/dev/null 2>&1; then
  echo "$dir"
  exit 0
fi

echo "tests/vscode/install.sh: installing code-server $version into $dir (about 2-3 minutes)" >&2
start=$SECONDS
rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"
export npm_config_nodedir=${npm_config_nodedir:-/usr}   # node headers for node-gyp
gyp="node $(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js"
npm_quiet=(--no-audit --no-fund --ignore-scripts --omit=dev --loglevel=error)
echo '{"private":true}' > package.json
npm install "${npm_quiet[@]}" code-server@$version >&2
csd=$dir/node_modules/code-server
(cd "$csd/lib/vscode" && npm install "${npm_quiet[@]}" >&2)
(cd "$csd/lib/vscode/extensions" && npm install "${npm_quiet[@]}" >&2)
# Native modules, built locally: their install scripts would download prebuilt binaries.
for p in node-pty @vscode/spdlog native-watchdog @vscode/deviceid kerberos; do
  (cd "$csd/lib/vscode/node_modules/$p" && $gyp rebuild -j 2 >/dev/null 2>&1) \
    || { echo "tests/vscode/install.sh: building $p failed" >&2; exit 1; }
done
(cd "$dir/node_modules/argon2" && ../.bin/node-pre-gyp rebuild --build-from-source >/dev/null 2>&1) \
  || { echo "tests/vscode/install.sh: building argon2 failed" >&2; exit 1; }
# The rest of code-server's postinstall.sh.
mkdir -p "$csd/lib/vscode/node_modules/@vscode/ripgrep/bin"
ln -sf /usr/bin/rg "$csd/lib/vscode/node_modules/@vscode/ripgrep/bin/rg"
ln -sfn node_modules "$csd/lib/vscode/node_modules.asar"
ln -sfn code-linux.sh "$csd/lib/vscode/bin/remote-cli/code-server"
ln -sfn browser-linux.sh "$csd/lib/vscode/bin/helpers/browser.sh"
HOME=$dir/home "$dir/node_modules/.bin/code-server" --version >&2
echo "$version" > "$stamp"
echo "tests/vscode/install.sh: code-server installed in $((SECONDS - start)) s" >&2
echo "$dir"
