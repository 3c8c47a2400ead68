#!/usr/bin/env bash
# Checks that the committed assets/dist is exactly what the source in
# assets/web builds: a clean install from the lock file, a build, and no
# difference in git (changed, added or removed files all count).
#
# The binary embeds assets/dist, so `cargo build` needs no Node; this check
# is what keeps that copy honest. CI runs it before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/web"

npm ci --no-audit --no-fund
npm run build

cd ..
# Against the index, which in CI's fresh clone is the commit under test.
untracked=$(git ls-files --others --exclude-standard -- dist)
if ! git diff --exit-code --stat -- dist || [ -n "$untracked" ]; then
    [ -z "$untracked" ] || printf 'not committed: %s\n' $untracked
    echo "assets/dist does not match a fresh build of assets/web: run 'npm run build' in assets/web and commit assets/dist" >&2
    exit 1
fi
echo "assets/dist matches a fresh build of assets/web"
