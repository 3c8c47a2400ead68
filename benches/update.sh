#!/usr/bin/env bash
# The update benchmark (issue #9): a load generator sends API and static
# requests continuously (keep-alive clients, reconnecting when the server
# closes) while `pagodirecto update` replaces the running daemon with a newer
# build, fetched from a release feed served on 127.0.0.1 and signed with a
# key made for this run. Prints total and failed requests (connection
# refused, reset or closed without an answer, 5xx) and p50/p99/max latency
# before, during and after the update, and where the swap's time went (from
# the daemon's log). Target: 0 failed requests.
#
# Builds two release binaries from this tree, the second with a higher
# version (PAGODIRECTO_VERSION) — both trusting the run's key through
# PAGODIRECTO_EXTRA_UPDATE_KEY, which no shipped build sets.
#
#   benches/update.sh                    # DURATION=30 s of load, 32 clients
#   DURATION=60 CONNECTIONS=64 benches/update.sh
#   SKIP_BUILD=1 benches/update.sh       # reuse the binaries of the last run
#
# Not run by CI. Needs curl and python3. Everything it starts is stopped on
# exit, by pid; its temp dir is removed.
set -euo pipefail

DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-32}
USER_EMAIL=${USER_EMAIL:-agent@andes.example}

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
keep=$target/update-bench          # binaries and key kept between runs
mkdir -p "$keep"
for tool in curl python3; do
    command -v $tool >/dev/null || { echo "update.sh: needs $tool" >&2; exit 1; }
done

current=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
IFS=. read -r major minor patch <<<"${current%%-*}"
newer="$major.$minor.$((patch + 1))"
if [[ -z ${SKIP_BUILD:-} ]]; then
    if [[ ! -s $keep/key.pub ]]; then
        (cd "$repo" && cargo run --quiet --release --example sign_release -- gen-key "$keep/key" "$keep/key.pub")
    fi
    export PAGODIRECTO_EXTRA_UPDATE_KEY=$keep/key.pub
    echo "== building $newer (the update) and $current (the running one), release"
    (cd "$repo" && PAGODIRECTO_VERSION=$newer cargo build --release --bin pagodirecto)
    cp "$target/release/pagodirecto" "$keep/pagodirecto-$newer"
    (cd "$repo" && cargo build --release --bin pagodirecto --example update_load --example sign_release)
    cp "$target/release/pagodirecto" "$keep/pagodirecto-$current"
    cp "$target/release/examples/update_load" "$target/release/examples/sign_release" "$keep/"
fi

work=$(mktemp -d /tmp/pd-update-bench.XXXX)
chmod 755 "$work"
daemon_pid= feed_pid= load_pid=
stop_pid() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$?
    stop_pid "$load_pid"
    # After the update the daemon is another process: the lock file names it.
    stop_pid "$(cat "$work/data/pagodirecto.lock" 2>/dev/null || true)"
    stop_pid "$daemon_pid"
    stop_pid "$feed_pid"
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT INT TERM

echo "== release feed on 127.0.0.1 with a signed $newer archive"
asset="pagodirecto-$newer-$(uname -m)-linux.tar.gz"
mkdir -p "$work/feed/repos/pagodirecto/pagodirecto" "$work/stage/pagodirecto-$newer-$(uname -m)-linux"
cp "$keep/pagodirecto-$newer" "$work/stage/pagodirecto-$newer-$(uname -m)-linux/pagodirecto"
tar -C "$work/stage" --owner=0 --group=0 -czf "$work/feed/$asset" "pagodirecto-$newer-$(uname -m)-linux"
"$keep/sign_release" sign "$keep/key" "$work/feed/$asset"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/feed/repos/pagodirecto/pagodirecto/releases" <<EOF
[{"tag_name": "v$newer", "prerelease": false, "draft": false, "body": "benchmark build",
  "assets": [{"name": "$asset", "browser_download_url": "http://127.0.0.1:$port/$asset"}]}]
EOF
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/feed" >"$work/feed.log" 2>&1 &
feed_pid=$!

echo "== starting $current (--demo) from $work/bin"
mkdir -p "$work/bin"
cp "$keep/pagodirecto-$current" "$work/bin/pagodirecto"
export PAGODIRECTO_UPDATE__FEED=http://127.0.0.1:$port
PAGODIRECTO_SERVER__RATE_LIMIT_PER_MINUTE=100000000 \
PAGODIRECTO_BACKUP__SCHEDULE= \
"$work/bin/pagodirecto" run --demo --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/daemon.out" 2>&1 &
daemon_pid=$!
addr=
for _ in $(seq 1200); do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "update.sh: the daemon exited:" >&2; cat "$work/daemon.out" >&2; exit 1
    fi
    if [[ -s $work/data/run/http.addr ]] && curl -fs "http://$(cat "$work/data/run/http.addr")/ready" >/dev/null; then
        addr=$(cat "$work/data/run/http.addr")
        break
    fi
    sleep 0.1
done
[[ -n $addr ]] || { echo "update.sh: not ready in 120 s" >&2; tail -20 "$work/daemon.out" >&2; exit 1; }
password=$(grep -o 'password [0-9a-f]*' "$work/data/secrets/demo-users.txt" | cut -d' ' -f2)
token=$(curl -fs -X POST "http://$addr/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\": \"$USER_EMAIL\", \"password\": \"$password\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

echo "== $CONNECTIONS clients for $DURATION s; pagodirecto update after $((DURATION / 3)) s"
"$keep/update_load" "$addr" "$token" "$CONNECTIONS" "$DURATION" "$work/window" >"$work/load.out" &
load_pid=$!
sleep $((DURATION / 3))
start=$(date +%s%3N)
"$work/bin/pagodirecto" --data-dir "$work/data" update
end=$(date +%s%3N)
echo "$start $end" >"$work/window"
wait "$load_pid"
load_pid=

echo
echo "== results"
"$work/bin/pagodirecto" --data-dir "$work/data" status | sed -n '1p;/last update/,/backup taken/p'
python3 - "$work/load.out" "$work/daemon.out" <<'EOF'
import re, sys
from datetime import datetime
fields = dict(kv.split("=", 1) for kv in open(sys.argv[1]).read().split()[1:])
print(f"requests {fields['requests']}, failed {fields['failed']} "
      f"(refused {fields['refused']}, broken {fields['broken']}, 5xx {fields['status_5xx']}); "
      f"pagodirecto update took {int(fields['swap_ms']) / 1000:.1f} s")
for phase in ("before", "during", "after"):
    print(f"  {phase:6}: {fields[phase + '_answered']:>7} answered, p50 {fields[phase + '_p50_ms']} ms, "
          f"p99 {fields[phase + '_p99_ms']} ms, max {fields[phase + '_max_ms']} ms")
before, during = float(fields["before_p99_ms"]), float(fields["during_p99_ms"])
print(f"  p99 during the update vs before: x{during / before:.1f}")
print("  target: 0 failed requests:", "PASS" if fields["failed"] == "0" else "MISS")
# Where the swap's time went, from the log (the old and new processes share it).
marks = {
    "handing over": r"updating: handing the sockets over",
    "HTTP drained": r"HTTP drained",
    "postgres stopped": r'stopped service="postgres"',
    "new process started": r"new version started",
    "new postgres ready": r"postgres is ready",
    "new process ready": r"daemon: ready",
}
seen, times = set(), {}
text = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[2]).read())
after = text[text.rfind("\n", 0, text.find("updating: handing the sockets over")) + 1:]
for line in after.splitlines():
    for name, pattern in marks.items():
        stamp = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?)", line)
        if stamp and name not in times and re.search(pattern, line):
            times[name] = datetime.fromisoformat(stamp.group(1))
if "handing over" in times and "new process ready" in times:
    t0 = times["handing over"]
    print("  the swap (no process accepting; connections wait in the backlog):")
    for name in marks:
        if name in times:
            print(f"    +{(times[name] - t0).total_seconds() * 1000:7.0f} ms  {name}")
EOF
