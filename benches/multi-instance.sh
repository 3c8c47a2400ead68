#!/usr/bin/env bash
# Multi-instance benchmark (issue #10): API throughput, GET
# /api/v1/customers?limit=50 with a valid token on the --demo data, with one
# and then with two pagodirecto instances on this machine sharing one
# external PostgreSQL 15 (started here on 127.0.0.1 as the `postgres`
# account). With two instances, two wrk processes run at the same time, one
# per instance, each with half the connections; their req/s are summed.
#
# Not run by CI. Needs root (to run postgres as `postgres`), wrk, curl and
# PostgreSQL 15 at /usr/lib/postgresql/15/bin (PG_BIN to change).
#
#   benches/multi-instance.sh              # 20 s per measurement
#   DURATION=60 SKIP_BUILD=1 benches/multi-instance.sh
#
# Everything it starts (postgres, the instances) is stopped on exit, by pid.
set -euo pipefail

DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
USER_EMAIL=${USER_EMAIL:-agent@andes.example}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${PD_BIN:-$target/release/pagodirecto}
for tool in wrk curl setpriv; do
    command -v "$tool" >/dev/null || { echo "multi-instance.sh: needs $tool" >&2; exit 1; }
done
if [[ -z ${SKIP_BUILD:-} ]]; then
    echo "== building release"
    (cd "$repo" && cargo build --release --bin pagodirecto)
fi

work=$(mktemp -d /tmp/pd-multi.XXXX)
chmod 755 "$work"
pids=()
pg_pid=
stop_pid() {
    local pid=$1 sig=$2
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do stop_pid "$pid" TERM; done
    [[ -n $pg_pid ]] && stop_pid "$pg_pid" INT
    wait 2>/dev/null || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT INT TERM

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
mkdir -p "$work/pg" && chown postgres: "$work/pg"
echo admin-secret >"$work/pg/pw" && chown postgres: "$work/pg/pw"
as_pg "$PG_BIN/initdb" -D "$work/pg/data" -U admin --auth=scram-sha-256 --pwfile="$work/pg/pw" -E UTF8 --locale=C.UTF-8 >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work/pg" && exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$PG_BIN/postgres" \
    -D "$work/pg/data" -p "$port" -k "$work/pg" -c listen_addresses=127.0.0.1 -c max_connections=100 \
    -c shared_buffers=256MB >"$work/pg/log" 2>&1) &
pg_pid=$!
for _ in $(seq 300); do "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
export PGPASSWORD=admin-secret
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U admin -d postgres -c "CREATE ROLE pd LOGIN PASSWORD 'pd-secret' CREATEROLE BYPASSRLS"
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U admin -d postgres -c "CREATE DATABASE crm OWNER pd"
unset PGPASSWORD
echo "== PostgreSQL 15 on 127.0.0.1:$port (pid $pg_pid)"

start_instance() { # DIR [--demo] → prints the address
    local dir=$1; shift
    mkdir -p "$dir"
    PAGODIRECTO_DATABASE__URL="postgres://pd@127.0.0.1:$port/crm" PAGODIRECTO_DATABASE__PASSWORD=pd-secret \
    PAGODIRECTO_DATABASE__BIN_DIR="$PG_BIN" PAGODIRECTO_BACKUP__SCHEDULE="" PAGODIRECTO_BACKUP__DRILL="" \
    PAGODIRECTO_SERVER__RATE_LIMIT_PER_MINUTE=100000000 PAGODIRECTO_LIMITS__POOL_SIZE=16 \
        "$bin" run "$@" --listen 127.0.0.1:0 --data-dir "$dir" >"$dir/daemon.out" 2>&1 &
    pids+=($!)
    local pid=$!
    for _ in $(seq 1200); do
        kill -0 "$pid" 2>/dev/null || { cat "$dir/daemon.out" >&2; exit 1; }
        if [[ -s $dir/run/http.addr ]] && curl -fs "http://$(cat "$dir/run/http.addr")/ready" >/dev/null; then
            cat "$dir/run/http.addr"; return
        fi
        sleep 0.1
    done
    echo "multi-instance.sh: $dir not ready" >&2; exit 1
}
a=$(start_instance "$work/a" --demo)
b=$(start_instance "$work/b")
echo "== instances: $a (seeded the demo data), $b"

password=$(grep -o 'password [0-9a-f]*' "$work/a/secrets/demo-users.txt" | cut -d' ' -f2)
token=$(curl -fs -X POST "http://$a/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\": \"$USER_EMAIL\", \"password\": \"$password\"}" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[[ -n $token ]] || { echo "multi-instance.sh: login failed" >&2; exit 1; }
# The token from A works on B: the signing keys are shared through the database.
curl -fs "http://$b/api/v1/customers?limit=1" -H "authorization: Bearer $token" >/dev/null

cat >"$work/bench.lua" <<'LUA'
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PD_TOKEN")
function done(summary, latency, requests)
    io.write(string.format("RESULT rps=%.1f p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
        summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
        summary.errors.status or 0, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
run_wrk() { # ADDR CONNECTIONS SECONDS OUT
    PD_TOKEN=$token wrk -t"$THREADS" -c"$2" -d"$3s" -s "$work/bench.lua" "http://$1/api/v1/customers?limit=50" >"$4"
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" "$2"; }

echo "== warm-up ${WARMUP}s on both"
run_wrk "$a" 8 "$WARMUP" /dev/null &
warm=$!
run_wrk "$b" 8 "$WARMUP" /dev/null
wait "$warm"

echo "== one instance: wrk -c$CONNECTIONS -d${DURATION}s against $a"
run_wrk "$a" "$CONNECTIONS" "$DURATION" "$work/one.out"
half=$((CONNECTIONS / 2))
echo "== two instances: two wrk -c$half -d${DURATION}s, against $a and $b at once"
run_wrk "$a" "$half" "$DURATION" "$work/two-a.out" &
wa=$!
run_wrk "$b" "$half" "$DURATION" "$work/two-b.out"
wait "$wa"

one=$(field rps "$work/one.out"); ta=$(field rps "$work/two-a.out"); tb=$(field rps "$work/two-b.out")
awk -v one="$one" -v ta="$ta" -v tb="$tb" -v p1="$(field p99_us "$work/one.out")" \
    -v pa="$(field p99_us "$work/two-a.out")" -v pb="$(field p99_us "$work/two-b.out")" \
    -v e1="$(field non2xx "$work/one.out")" -v ea="$(field non2xx "$work/two-a.out")" -v eb="$(field non2xx "$work/two-b.out")" \
    -v cpus="$(nproc)" -v load="$(cut -d' ' -f1 /proc/loadavg)" -v c="$CONNECTIONS" -v d="$DURATION" 'BEGIN {
    printf "\n== results (%d CPUs shared by wrk, the instances and PostgreSQL; load average %s; %ss each, %d connections in total)\n", cpus, load, d, c
    printf "one instance:  %.0f req/s, p99 %.2f ms, non-2xx %d\n", one, p1 / 1000, e1
    printf "two instances: %.0f req/s (%.0f + %.0f), p99 %.2f / %.2f ms, non-2xx %d\n", ta + tb, ta, tb, pa / 1000, pb / 1000, ea + eb
    printf "scaling: %.2fx\n", (ta + tb) / one
}'
