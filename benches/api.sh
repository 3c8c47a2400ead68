#!/usr/bin/env bash
# The API benchmark (issue #3): GET /api/v1/customers?limit=50 with a valid
# token on the --demo data, 100 concurrent connections for a fixed time, from
# wrk on this machine; beside it, in the same run, `pgbench -S` against the
# same PostgreSQL. Prints requests/s, p50 and p99, pgbench TPS and their ratio.
#
# Targets: p99 < 20 ms, API requests/s >= 40 % of pgbench -S TPS.
#
# Not run by CI. Needs wrk (apt-get install -y wrk), curl and the PostgreSQL
# client tools that the daemon uses (pgbench, psql). As root the daemon runs
# PostgreSQL as the `postgres` account, as in production.
#
#   benches/api.sh                # 30 s per measurement
#   DURATION=60 benches/api.sh
#   SKIP_BUILD=1 benches/api.sh   # reuse the last release build
#   SKIP_BUILD=1 PD_BIN=/path/to/pagodirecto benches/api.sh
#
# Everything it starts (daemon, postgres under it) is stopped on exit, by pid,
# and the temporary data dir is removed.
set -euo pipefail

DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
CONNECTIONS=${CONNECTIONS:-100}
THREADS=${THREADS:-2}
PGBENCH_CLIENTS=${PGBENCH_CLIENTS:-16}
PGBENCH_SCALE=${PGBENCH_SCALE:-10}
USER_EMAIL=${USER_EMAIL:-agent@andes.example}

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
# Not PAGODIRECTO_BIN: the daemon reads every PAGODIRECTO_* variable as config.
bin=${PD_BIN:-$target/release/pagodirecto}

for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "api.sh: needs $tool (apt-get install -y $tool)" >&2; exit 1; }
done

if [[ -z ${SKIP_BUILD:-} ]]; then
    echo "== building release"
    (cd "$repo" && cargo build --release --bin pagodirecto)
fi

data=$(mktemp -d /tmp/pd-bench.XXXX)
daemon_pid=
cleanup() {
    local status=$?
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        # SIGTERM like systemd: the daemon drains HTTP and stops its postgres.
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
    exit "$status"
}
trap cleanup EXIT INT TERM

echo "== starting pagodirecto run --demo on $data"
# One load generator on one address is not a crowd of clients: lift the
# per-client rate limit (1200/min by default) so it measures the API, not
# the limiter's 429s.
PAGODIRECTO_SERVER__RATE_LIMIT_PER_MINUTE=100000000 \
"$bin" run --demo --listen 127.0.0.1:0 --data-dir "$data" >"$data/daemon.out" 2>&1 &
daemon_pid=$!
addr=
for _ in $(seq 600); do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "api.sh: the daemon exited:" >&2; cat "$data/daemon.out" >&2; exit 1
    fi
    if [[ -s $data/run/http.addr ]] && curl -fs "http://$(cat "$data/run/http.addr")/ready" >/dev/null; then
        addr=$(cat "$data/run/http.addr")
        break
    fi
    sleep 0.1
done
[[ -n $addr ]] || { echo "api.sh: not ready in 60 s" >&2; cat "$data/daemon.out" >&2; exit 1; }
grep -o 'demo data seeded elapsed=[^ ]*' "$data/daemon.out" || true

password=$(grep -o 'password [0-9a-f]*' "$data/secrets/demo-users.txt" | cut -d' ' -f2)
token=$(curl -fs -X POST "http://$addr/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\": \"$USER_EMAIL\", \"password\": \"$password\"}" |
    sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[[ -n $token ]] || { echo "api.sh: login as $USER_EMAIL failed" >&2; exit 1; }
url="http://$addr/api/v1/customers?limit=50"
items=$(curl -fs "$url" -H "authorization: Bearer $token" | grep -o '"id":' | wc -l)
echo "== logged in as $USER_EMAIL; one page has $items customers"

# wrk's Lua: the token on every request; percentiles printed in microseconds.
cat >"$data/bench.lua" <<'LUA'
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PD_TOKEN")
function done(summary, latency, requests)
    local secs = summary.duration / 1e6
    local non2xx = (summary.errors.status or 0)
    io.write(string.format("RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d non2xx=%d socket_errors=%d\n",
        summary.requests / secs, latency:percentile(50), latency:percentile(99), summary.requests, non2xx,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

load0=$(cut -d' ' -f1 /proc/loadavg)
echo "== warm-up: ${WARMUP}s (load average $load0)"
PD_TOKEN=$token wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$data/bench.lua" "$url" >/dev/null
# CPU time, in clock ticks, of all processes (from /proc/stat) and of the
# daemon with its postgres processes: what is left over during the run was
# used by something else on the machine, which the figures must be read with.
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
ours() {
    local pm pids=$daemon_pid
    pm=$(pgrep -P "$daemon_pid" postgres | head -1) && pids="$pids $pm $(pgrep -P "$pm" | tr '\n' ' ')"
    for p in $pids; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done | awk '{s += $1} END {print s}'
}
echo "== API: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s GET /api/v1/customers?limit=50"
busy0=$(busy) ours0=$(ours)
TIMEFORMAT='%U %S' # wrk's own CPU seconds, from bash's `time`
{ time PD_TOKEN=$token wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$data/bench.lua" "$url" >"$data/wrk.out"; } 2>"$data/wrk.time"
busy1=$(busy) ours1=$(ours)
cat "$data/wrk.out"
hz=$(getconf CLK_TCK)
others=$(awk -v b="$((busy1 - busy0))" -v o="$((ours1 - ours0))" -v hz="$hz" -v d="$DURATION" -v n="$(nproc)" \
    '{w = ($1 + $2) * hz; x = b - o - w; if (x < 0) x = 0; printf "%.0f", 100 * x / (hz * d * n)}' "$data/wrk.time")
result=$(grep '^RESULT' "$data/wrk.out")
rps=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$result")
p50=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$result")
p99=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$result")
non2xx=$(sed -n 's/.*non2xx=\([0-9]*\).*/\1/p' <<<"$result")

# pgbench against the same cluster, through the daemon's private socket.
pg_bin=${PG_BIN:-$("$bin" --data-dir "$data" postgres status | sed -n '1s/^PostgreSQL [^ ]* in //p')}
socket=$(ls "$data/run/postgres" | sed -n 's/^\.s\.PGSQL\.\([0-9]*\)$/\1/p' | head -1)
export PGHOST=$data/run/postgres PGPORT=${socket:-5432} PGUSER=postgres
PGPASSWORD=$(cat "$data/secrets/postgres-superuser.password")
export PGPASSWORD
echo "== pgbench: init scale $PGBENCH_SCALE with $pg_bin"
"$pg_bin/psql" -X -q -d postgres -c 'CREATE DATABASE pgbench'
"$pg_bin/pgbench" -i -q -s "$PGBENCH_SCALE" pgbench 2>&1 | tail -1
echo "== pgbench -S -c $PGBENCH_CLIENTS -j $THREADS -T $DURATION"
"$pg_bin/pgbench" -S -n -c "$PGBENCH_CLIENTS" -j "$THREADS" -T "$DURATION" pgbench | tee "$data/pgbench.out"
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$data/pgbench.out" | tail -1)

# Diagnostic: the SQL one API request sends, replayed by pgbench as the API's
# role with the same parameters (so the same plan-cache behaviour), without
# HTTP, JWT, Rust or JSON. Its TPS is the ceiling for the API on this box.
tenant=$("$pg_bin/psql" -X -At -d pagodirecto -c "SELECT tenant_id FROM iam.users WHERE email = '$USER_EMAIL'")
user=$("$pg_bin/psql" -X -At -d pagodirecto -c "SELECT id FROM iam.users WHERE email = '$USER_EMAIL'")
cat >"$data/replay.sql" <<'SQL'
\set lim 51
BEGIN;
SELECT iam.begin_request(:tenant, :user, NULL);
SELECT id, name, email, phone, company, notes, archived_at, version, created_at, updated_at FROM customers.customers WHERE (archived_at IS NOT NULL) = false AND (created_at, id) < (:start, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid) ORDER BY created_at DESC, id DESC LIMIT :lim;
COMMIT;
SQL
echo "== the API's SQL alone: pgbench -M prepared -f replay.sql -c $PGBENCH_CLIENTS -j $THREADS -T $DURATION"
PGUSER=pagodirecto_app PGPASSWORD=$(cat "$data/secrets/postgres-app.password") "$pg_bin/pgbench" -n -M prepared \
    -f "$data/replay.sql" -D tenant="$tenant" -D user="$user" -D start=2999-01-01 \
    -c "$PGBENCH_CLIENTS" -j "$THREADS" -T "$DURATION" pagodirecto >"$data/replay.out"
replay=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$data/replay.out" | tail -1)

awk -v rps="$rps" -v p50="$p50" -v p99="$p99" -v tps="$tps" -v non2xx="$non2xx" -v d="$DURATION" -v c="$CONNECTIONS" \
    -v replay="$replay" -v load0="$load0" -v others="$others" -v cpus="$(nproc)" '
BEGIN {
    ratio = 100 * rps / tps
    printf "\n== results (%ss each, same machine, same PostgreSQL; %d CPUs, load average %s before the run;\n", d, cpus, load0
    printf "   other processes used %s %% of the CPUs during the API measurement)\n", others
    printf "API  GET /api/v1/customers?limit=50, %d connections: %.0f req/s, p50 %.2f ms, p99 %.2f ms, non-2xx %d\n", c, rps, p50 / 1000, p99 / 1000, non2xx
    printf "pgbench -S: %.0f TPS\n", tps
    printf "ratio API/pgbench: %.1f %%\n", ratio
    printf "diagnostic, the API'"'"'s SQL alone (no HTTP, Rust or JSON): %.0f TPS = %.1f %% of pgbench -S\n", replay, 100 * replay / tps
    printf "target p99 < 20 ms: %s\n", (p99 < 20000 ? "met" : "MISSED")
    printf "target ratio >= 40 %%: %s\n", (ratio >= 40 ? "met" : "MISSED")
}'
