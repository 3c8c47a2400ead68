#!/usr/bin/env bash
# The memory benchmark (issue #7): how much memory the appliance holds idle,
# with the default budget, and under the API benchmark's load.
#
# Targets: daemon <= 30 MB RSS idle; daemon + postgres <= 120 MB idle.
#
# What "memory" means here, per process, from /proc:
#   RSS  VmRSS: resident pages, shared ones (postgres' shared_buffers, the
#        binary's text) counted in full in every process that maps them;
#   PSS  Pss from smaps_rollup: shared pages split between their users, so a
#        sum over processes counts each page once. The daemon + postgres
#        target is judged on the PSS sum (summing RSS counts shared_buffers
#        once per backend); the RSS sum is printed beside it.
# Also printed: the postgres cgroup's own usage (`status --json`), which the
# kernel keeps and which includes the page cache postgres caused.
#
# Phases (one data dir):
#   1. idle, fresh: `pagodirecto run` on an empty data dir, defaults, no
#      traffic; measured IDLE_SECS after /ready is 200.
#   2. load: restarted with --demo (the API benchmark's data and user), then
#      wrk -c CONNECTIONS on GET /api/v1/customers?limit=50 for DURATION s;
#      the daemon's RSS is sampled every second (peak), the tree at the end.
#   3. idle after load: IDLE_SECS after wrk ends (what is given back).
#
# Not run by CI. Needs wrk, curl, jq. As root the daemon runs PostgreSQL as
# the `postgres` account, as in production.
#
#   benches/memory.sh
#   SKIP_BUILD=1 DURATION=30 benches/memory.sh
#
# Everything it starts is stopped on exit, by pid; the data dir is removed.
set -euo pipefail

DURATION=${DURATION:-30}
IDLE_SECS=${IDLE_SECS:-10}
CONNECTIONS=${CONNECTIONS:-100}
THREADS=${THREADS:-2}
USER_EMAIL=${USER_EMAIL:-agent@andes.example}

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${PD_BIN:-$target/release/pagodirecto}

for tool in wrk curl jq; do
    command -v "$tool" >/dev/null || { echo "memory.sh: needs $tool (apt-get install -y $tool)" >&2; exit 1; }
done
while read -r var; do unset "$var"; done < <(compgen -e | grep '^PAGODIRECTO_' || true)

if [[ -z ${SKIP_BUILD:-} ]]; then
    echo "== building release"
    (cd "$repo" && cargo build --release --bin pagodirecto)
fi

data=$(mktemp -d /tmp/pd-bench.XXXX)
config=$data.toml
printf '# benches/memory.sh: built-in defaults\n' >"$config"
daemon_pid=
stop_daemon() {
    [[ -n $daemon_pid ]] || return 0
    if kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 200); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
}
cleanup() {
    local status=$?
    stop_daemon
    rm -rf "$data" "$config"
    exit "$status"
}
trap cleanup EXIT INT TERM

start() { # start [run flags...]: sets daemon_pid, addr
    rm -f "$data/run/http.addr"
    PAGODIRECTO_SERVER__RATE_LIMIT_PER_MINUTE=100000000 PAGODIRECTO_BACKUP__SCHEDULE= \
        "$bin" --config "$config" run --listen 127.0.0.1:0 --data-dir "$data" "$@" >>"$data.out" 2>&1 &
    daemon_pid=$!
    addr=
    for _ in $(seq 1200); do
        kill -0 "$daemon_pid" 2>/dev/null || { echo "memory.sh: the daemon exited:" >&2; tail -30 "$data.out" >&2; exit 1; }
        if [[ -s $data/run/http.addr ]] && curl -fs "http://$(cat "$data/run/http.addr")/ready" >/dev/null; then
            addr=$(cat "$data/run/http.addr")
            return
        fi
        sleep 0.1
    done
    echo "memory.sh: not ready in 120 s" >&2
    exit 1
}

kb() { # kb FIELD FILE PIDS...: sum of "FIELD: N kB" over /proc/PID/FILE
    local field=$1 file=$2 total=0 pid v
    shift 2
    for pid in "$@"; do
        v=$(awk -v f="$field:" '$1 == f { print $2; exit }' "/proc/$pid/$file" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
pg_pids() { # processes whose cwd is the cluster: the postmaster and every backend
    local target pid
    target=$(readlink -f "$data/pg/data")
    for pid in /proc/[0-9]*; do
        [[ $(readlink "$pid/cwd" 2>/dev/null) == "$target" ]] && echo "${pid#/proc/}"
    done
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

declare -A FIG
measure() { # measure NAME: the daemon's and the tree's RSS/PSS into FIG[NAME.*]
    local -a pids
    mapfile -t pids < <(pg_pids)
    FIG[$1.d_rss]=$(kb VmRSS status "$daemon_pid")
    FIG[$1.d_pss]=$(kb Pss smaps_rollup "$daemon_pid")
    FIG[$1.p_rss]=$(kb VmRSS status "${pids[@]}")
    FIG[$1.p_pss]=$(kb Pss smaps_rollup "${pids[@]}")
    FIG[$1.p_n]=${#pids[@]}
    FIG[$1.cg]=$("$bin" --config "$config" --data-dir "$data" status --json | jq -r '.cgroup.postgres_memory_bytes // 0')
    FIG[$1.mode]=$("$bin" --config "$config" --data-dir "$data" status --json | jq -r '.cgroup.mode')
    echo "   $1: daemon RSS $(mib "${FIG[$1.d_rss]}") MiB (PSS $(mib "${FIG[$1.d_pss]}")); postgres ${FIG[$1.p_n]} processes RSS $(mib "${FIG[$1.p_rss]}") MiB, PSS $(mib "${FIG[$1.p_pss]}") MiB; postgres cgroup ($(jq -rn --arg m "${FIG[$1.mode]}" '$m')) $(mib $((FIG[$1.cg] / 1024))) MiB"
}

echo "== 1. idle, fresh data dir, default budget ($IDLE_SECS s after ready)"
start
sleep "$IDLE_SECS"
measure idle
stop_daemon

echo "== 2. load: run --demo, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s GET /api/v1/customers?limit=50"
start --demo
password=$(grep -o 'password [0-9a-f]*' "$data/secrets/demo-users.txt" | cut -d' ' -f2)
token=$(curl -fs -X POST "http://$addr/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\": \"$USER_EMAIL\", \"password\": \"$password\"}" | jq -r .access_token)
[[ -n $token && $token != null ]] || { echo "memory.sh: login as $USER_EMAIL failed" >&2; exit 1; }
sleep "$IDLE_SECS"
measure demo_idle
cat >"$data.lua" <<'LUA'
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PD_TOKEN")
LUA
PD_TOKEN=$token wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$data.lua" \
    "http://$addr/api/v1/customers?limit=50" >"$data.wrk" &
wrk_pid=$!
peak=0
while kill -0 "$wrk_pid" 2>/dev/null; do
    r=$(kb VmRSS status "$daemon_pid")
    ((r > peak)) && peak=$r
    sleep 1
done
wait "$wrk_pid"
measure load_end
rps=$(awk '/^Requests\/sec/ { print $2 }' "$data.wrk")
echo "   wrk: $rps requests/s; daemon peak RSS during the run $(mib "$peak") MiB"

echo "== 3. idle again ($IDLE_SECS s after the load)"
sleep "$IDLE_SECS"
measure after
stop_daemon
rm -f "$data.lua" "$data.wrk" "$data.out"

verdict() { if (($1 <= $2)); then echo met; else echo MISSED; fi; }
total_pss=$((FIG[idle.d_pss] + FIG[idle.p_pss]))
total_rss=$((FIG[idle.d_rss] + FIG[idle.p_rss]))
echo
echo "== results ($(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%M:%SZ), $("$bin" --version | head -1), cgroup ${FIG[idle.mode]})"
printf '%-44s %10s %10s\n' "" "RSS MiB" "PSS MiB"
printf '%-44s %10s %10s\n' "idle: daemon" "$(mib "${FIG[idle.d_rss]}")" "$(mib "${FIG[idle.d_pss]}")"
printf '%-44s %10s %10s\n' "idle: postgres (${FIG[idle.p_n]} processes, summed)" "$(mib "${FIG[idle.p_rss]}")" "$(mib "${FIG[idle.p_pss]}")"
printf '%-44s %10s %10s\n' "idle: daemon + postgres" "$(mib "$total_rss")" "$(mib "$total_pss")"
printf '%-44s %10s %10s\n' "demo data loaded, idle: daemon" "$(mib "${FIG[demo_idle.d_rss]}")" "$(mib "${FIG[demo_idle.d_pss]}")"
printf '%-44s %10s %10s\n' "demo data loaded, idle: postgres" "$(mib "${FIG[demo_idle.p_rss]}")" "$(mib "${FIG[demo_idle.p_pss]}")"
printf '%-44s %10s %10s\n' "under load: daemon peak" "$(mib "$peak")" ""
printf '%-44s %10s %10s\n' "end of load: daemon" "$(mib "${FIG[load_end.d_rss]}")" "$(mib "${FIG[load_end.d_pss]}")"
printf '%-44s %10s %10s\n' "end of load: postgres (${FIG[load_end.p_n]} processes)" "$(mib "${FIG[load_end.p_rss]}")" "$(mib "${FIG[load_end.p_pss]}")"
printf '%-44s %10s %10s\n' "${IDLE_SECS} s after load: daemon" "$(mib "${FIG[after.d_rss]}")" "$(mib "${FIG[after.d_pss]}")"
printf '%-44s %10s %10s\n' "${IDLE_SECS} s after load: postgres" "$(mib "${FIG[after.p_rss]}")" "$(mib "${FIG[after.p_pss]}")"
echo "postgres cgroup usage (kernel's count, page cache included): idle $(mib $((FIG[idle.cg] / 1024))) MiB, end of load $(mib $((FIG[load_end.cg] / 1024))) MiB"
echo "target daemon idle RSS <= 30 MiB: $(verdict "${FIG[idle.d_rss]}" $((30 * 1024)))"
echo "target daemon + postgres idle (PSS sum) <= 120 MiB: $(verdict "$total_pss" $((120 * 1024)))"
