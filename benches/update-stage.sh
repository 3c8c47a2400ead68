#!/usr/bin/env bash
# benches/update-stage.sh: how long `pagodirecto update` takes to check the
# feed and to stage + swap a release (download, signature check over the
# whole archive, unpacking, running the new binary's `version --json`),
# with no daemon and no database (the backup is skipped), against a feed
# served on 127.0.0.1 by python3's http.server.
#
# Usage:
#   benches/update-stage.sh OLD_BINARY NEW_BINARY
#
# NEW_BINARY must report a higher version than OLD_BINARY (build it with
# PAGODIRECTO_VERSION=…; the integration tests leave one in
# <target>/update-fixture/debug/pagodirecto). OLD_BINARY must be a debug
# build (it trusts the test key, which signs the archive here).
#
# Environment:
#   RUNS=5                 updates measured; median, min and max are printed
#   SIGNER=...             the sign_release example [<target>/debug/examples/sign_release]
#   PORT=18231             the feed's port
#
# Prints the archive size and, per step, the median/min/max wall time.
set -euo pipefail
cd "$(dirname "$0")/.."

old=${1:?usage: benches/update-stage.sh OLD_BINARY NEW_BINARY}
new=${2:?usage: benches/update-stage.sh OLD_BINARY NEW_BINARY}
runs=${RUNS:-5}
port=${PORT:-18231}
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
signer=${SIGNER:-$target_dir/debug/examples/sign_release}
[ -x "$signer" ] || cargo build --example sign_release >&2

version=$("$new" version --json | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
name="pagodirecto-$version-$(uname -m)-linux"
work=$(mktemp -d /tmp/pd-update-bench.XXXXXX)
server=
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/srv/download" "$work/srv/repos/pagodirecto/pagodirecto" "$work/$name"
cp "$new" "$work/$name/pagodirecto"
tar -C "$work" -czf "$work/srv/download/$name.tar.gz" "$name"
"$signer" sign tests/fixtures/update/TEST-ONLY-signing.key "$work/srv/download/$name.tar.gz" 2>/dev/null
cat > "$work/srv/repos/pagodirecto/pagodirecto/releases" <<EOF
[{"tag_name": "v$version", "prerelease": false, "draft": false,
  "assets": [{"name": "$name.tar.gz",
              "browser_download_url": "http://127.0.0.1:$port/download/$name.tar.gz"}]}]
EOF
(cd "$work/srv" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
server=$!
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$port/repos/pagodirecto/pagodirecto/releases" >/dev/null 2>&1 && break
    sleep 0.1
done

export PAGODIRECTO_UPDATE__FEED="http://127.0.0.1:$port"
ms() { echo $(( ($2 - $1) / 1000000 )); }
checks=() updates=()
for i in $(seq "$runs"); do
    mkdir -p "$work/run$i" "$work/data$i"
    cp "$old" "$work/run$i/pagodirecto"
    t0=$(date +%s%N)
    "$work/run$i/pagodirecto" --data-dir "$work/data$i" update --check >/dev/null
    t1=$(date +%s%N)
    "$work/run$i/pagodirecto" --data-dir "$work/data$i" update >/dev/null 2>&1
    t2=$(date +%s%N)
    [ "$("$work/run$i/pagodirecto" version --json)" = "$("$new" version --json)" ] || {
        echo "run $i: the update did not happen" >&2
        exit 1
    }
    checks+=("$(ms "$t0" "$t1")")
    updates+=("$(ms "$t1" "$t2")")
    rm -rf "$work/run$i" "$work/data$i"
done

stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, min %d ms, max %d ms", a[int((NR+1)/2)], a[1], a[NR]}'; }
echo "archive: $name.tar.gz, $(stat -c %s "$work/srv/download/$name.tar.gz") bytes (binary $(stat -c %s "$new") bytes)"
echo "update --check:            $(stats "${checks[@]}")  ($runs runs)"
echo "update (stage + swap):     $(stats "${updates[@]}")  ($runs runs)"
