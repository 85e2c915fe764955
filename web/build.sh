#!/bin/sh
# Vendor the browser bundles from npm into web/static/vendor/ (idempotent; fast when up to date).
set -eu
cd "$(dirname "$0")"

# `npm ci` only when node_modules is missing or older than the lock file: npm writes
# node_modules/.package-lock.json on every install, so its mtime marks the last one.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] \
   || [ package.json -nt node_modules/.package-lock.json ]; then
    command -v npm >/dev/null 2>&1 || { echo "build.sh: npm is missing (make assets installs it)" >&2; exit 1; }
    # --ignore-scripts: none of these packages needs an install script, so none gets to run.
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
    touch node_modules/.package-lock.json
fi

# Each line: source in node_modules, name in vendor/. UMD/IIFE bundles that work from a plain
# <script src> without a bundler: xterm.js sets window.Terminal, addon-fit sets window.FitAddon,
# the player bundle sets window.AsciinemaPlayer.
FILES='
@xterm/xterm/lib/xterm.js xterm.js
@xterm/xterm/css/xterm.css xterm.css
@xterm/addon-fit/lib/addon-fit.js addon-fit.js
asciinema-player/dist/bundle/asciinema-player.min.js asciinema-player.min.js
asciinema-player/dist/bundle/asciinema-player.css asciinema-player.css
'
# The bundles are served to browsers, so their licence notices travel with them (the player
# bundle has solid-js compiled in).
LICENSES='@xterm/xterm @xterm/addon-fit asciinema-player solid-js'

out=static/vendor
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "$FILES" | while read -r src name; do
    [ -n "$src" ] || continue
    cp "node_modules/$src" "$tmp/$name"
done
for pkg in $LICENSES; do
    version=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "node_modules/$pkg/package.json")
    printf '==== %s %s ====\n\n' "$pkg" "$version"
    cat "node_modules/$pkg/LICENSE"
    printf '\n'
done > "$tmp/THIRD-PARTY-LICENSES.txt"

# Replace only what changed (keeps mtimes, so caches and make stay quiet), and drop leftovers
# of older builds so vendor/ holds exactly this list.
for f in "$tmp"/*; do
    name=$(basename "$f")
    cmp -s "$f" "$out/$name" || { cp "$f" "$out/$name"; chmod 644 "$out/$name"; echo "vendored $name"; }
done
for f in "$out"/*; do
    [ -e "$tmp/$(basename "$f")" ] || { rm -rf "$f"; echo "removed stale $(basename "$f")"; }
done
