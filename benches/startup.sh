#!/usr/bin/env bash
# benches/startup.sh: how long pagodirecto takes to start, restart and recover
# from a postgres crash, and how much memory it idles at, next to the floor
# set by bare PostgreSQL (same binaries, same initdb options) on this machine.
#
# Usage (as root: the daemon and the floor run postgres as the `postgres` user):
#   benches/startup.sh
#
# Environment:
#   RUNS=5           runs per measurement; the table shows median, min and max
#   BUILD=1          `cargo build --release` first (0: use the binary as it is)
#   PD_BIN=...       the daemon binary [target/release/pagodirecto]
#   PG_BIN=...       PostgreSQL binaries for the floor [/usr/lib/postgresql/15/bin]
#   PG_USER=postgres the account the floor's initdb/postgres run as
#   STABLE_SECS=31   postmaster uptime before each recovery kill (see below)
#   FAST_RECOVERY=1  also measure a crash right after start (informational)
#   POLL=0.01        polling interval in seconds (curl /ready, pg_isready)
#   FLOOR_OPTS=...   extra options for the floor's postgres, e.g.
#                    "-c recovery_init_sync_method=syncfs" as the daemon sets it
#
# What is measured (each RUNS times; times from `date +%s%N`):
#   floor cold      initdb (the daemon's options) + `postgres` until pg_isready
#   floor warm      `postgres` on that cluster after a clean stop until pg_isready
#   floor recovery  SIGKILL the postmaster (idle for STABLE_SECS), reap it,
#                   SIGKILL leftover backends (cwd = the data dir), start it
#                   again, until pg_isready
#   cold start      `pagodirecto run` on an empty data dir until /ready is 200
#   warm start      the same, on that data dir after a SIGTERM stop
#   recovery        SIGKILL the postmaster the daemon reports until /ready is
#                   200 again, counting only a 200 polled after the daemon is
#                   proven to have noticed the crash (see recover())
#   idle RSS        VmRSS of the daemon alone, 3 s after a warm start's first
#                   200 with no traffic; postgres' summed RSS/PSS for information
#
# Why recovery kills wait STABLE_SECS: the supervisor restarts postgres at once
# only after a run of at least `stable_after` (30 s, src/supervisor.rs); a
# shorter run is a "fast failure" that waits 100 ms (doubling) first, and 5 in
# a row end the daemon (crash loop). The target is about a crash in service, so
# each kill waits until the postmaster has been up STABLE_SECS; the floor's
# postmaster idles just as long before its kill, so both recover from the
# same state (what an idle cluster writes in that time). With
# FAST_RECOVERY=1 a separate, informational line measures a crash right after
# start (the first fast failure of a fresh daemon: includes the 100 ms backoff).
#
# The daemon runs with an empty config file of our own (built-in defaults, not
# /etc/pagodirecto) and no PAGODIRECTO_* variables, so the figures do not
# depend on the machine's configuration. Everything listens on 127.0.0.1 or on
# Unix sockets inside our temp dirs; the distribution's cluster is not touched.
# Every process and temp dir the script creates is removed on exit.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
BUILD=${BUILD:-1}
PD_BIN=${PD_BIN:-$ROOT/target/release/pagodirecto}
if [[ $PD_BIN -ef $ROOT/target/release/pagodirecto ]]; then
    PD_SOURCE=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')
else
    PD_SOURCE="PD_BIN"
fi
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=${PG_USER:-postgres}
STABLE_SECS=${STABLE_SECS:-31}
FAST_RECOVERY=${FAST_RECOVERY:-1}
POLL=${POLL:-0.01}
read -ra FLOOR_OPTS <<<"${FLOOR_OPTS:-}"

# Timeouts (seconds) for every wait loop, so the script always ends by itself.
COLD_TIMEOUT=90     # initdb + first start
START_TIMEOUT=60    # warm start / recovery
STOP_TIMEOUT=30     # clean stop, before escalating
GONE_TIMEOUT=10     # leftover processes after SIGKILL

# Targets.
COLD_OVER_FLOOR_MS=500
WARM_MAX_MS=500
RECOVERY_OVER_FLOOR_MS=300
RSS_MAX_KB=$((30 * 1024)) # 30 MiB

log() { printf '%s\n' "$*" >&2; }
die() {
    log "startup.sh: $*"
    exit 1
}

[[ $EUID -eq 0 ]] || die "run as root (postgres must run as the '$PG_USER' account)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ $STABLE_SECS =~ ^[0-9]+$ ]] || die "STABLE_SECS must be a whole number of seconds"
# Under 30 s every kill is a fast failure; the 5th in a row ends the daemon.
((STABLE_SECS >= 30 || RUNS < 5)) || die "STABLE_SECS < 30 with RUNS >= 5 would crash-loop the daemon"
for tool in curl jq setpriv stat awk sort; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
for prog in initdb postgres pg_isready; do
    [[ -x $PG_BIN/$prog ]] || die "no $PG_BIN/$prog (set PG_BIN)"
done
id -u "$PG_USER" >/dev/null 2>&1 || die "no OS user '$PG_USER'"
PG_GROUP=$(id -gn "$PG_USER")

# Isolation from the caller's environment: no daemon config from variables,
# no libpq defaults for pg_isready.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^PAGODIRECTO_' || true)
unset PGHOST PGPORT PGDATA PGUSER PGOPTIONS PGSERVICE PGSERVICEFILE

if [[ $BUILD == 1 ]]; then
    log "building: cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x $PD_BIN ]] || die "no daemon binary at $PD_BIN (build it, or set PD_BIN)"

# initdb and postgres resolve paths relative to the cwd and warn when they
# cannot read it as the postgres user.
cd / || die "cd /"

# ---------------------------------------------------------------------------
# Bookkeeping and cleanup

declare -a TMPDIRS=()  # removed on exit
declare -A CHILDREN=() # pid -> what: our background processes still unreaped

# (Locals are named _nd/_fd so that `printf -v` reaches the caller's variable.)
new_dir() { # new_dir VAR: a fresh temp dir (the daemon chowns it to postgres)
    local _nd
    _nd=$(mktemp -d /tmp/pd-bench.XXXXXX) || die "mktemp failed"
    TMPDIRS+=("$_nd")
    printf -v "$1" '%s' "$_nd"
}

alive() { # alive PID: exists and is not a zombie
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

procs_in() { # procs_in DIR [under]: live pids whose cwd is DIR (or below it)
    QUOTING_STYLE=literal stat -c '%N' /proc/[0-9]*/cwd 2>/dev/null |
        awk -v t="$1" -v under="${2:-}" '
            $2 == "->" && ($3 == t || (under != "" && index($3, t "/") == 1)) {
                split($1, p, "/"); print p[3]
            }'
}

wait_gone() { # wait_gone DIR [under]: SIGKILL what runs there, wait until none is left
    local deadline=$(($(date +%s) + GONE_TIMEOUT)) pids
    while :; do
        pids=$(procs_in "$@")
        [[ -z $pids ]] && return 0
        # shellcheck disable=SC2086 # one pid per word
        kill -KILL $pids 2>/dev/null
        (($(date +%s) < deadline)) || {
            log "processes still running in $1: $pids"
            return 1
        }
        sleep 0.005
    done
}

reap() { # reap PID: collects the exit status of our child into REAPED_RC
    wait "$1" 2>/dev/null
    REAPED_RC=$?
    unset "CHILDREN[$1]"
}

# stop_child PID SIGNAL...: sends each signal in turn, giving the process
# STOP_TIMEOUT seconds after the first and 5 after the others, then reaps it.
stop_child() {
    local pid=$1 sig deadline grace=$STOP_TIMEOUT
    shift
    for sig in "$@"; do
        alive "$pid" || break
        kill "-$sig" "$pid" 2>/dev/null
        deadline=$(($(date +%s) + grace))
        while alive "$pid" && (($(date +%s) < deadline)); do sleep 0.01; done
        grace=5
    done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    reap "$pid"
}

# pause SECONDS: a sleep that a signal interrupts at once (bash runs traps
# only between foreground commands, but `wait` returns for them).
SLEEP_PID=""
pause() {
    sleep "$1" &
    SLEEP_PID=$!
    wait "$SLEEP_PID"
    SLEEP_PID=""
}

cleanup() {
    local pid dir
    trap - EXIT INT TERM
    [[ -n $SLEEP_PID ]] && kill "$SLEEP_PID" 2>/dev/null
    for pid in "${!CHILDREN[@]}"; do
        case ${CHILDREN[$pid]} in
        daemon) stop_child "$pid" TERM KILL ;;
        *) stop_child "$pid" QUIT KILL ;;
        esac
    done
    # Backends of a killed postmaster, a postgres whose daemon died: all were
    # started by this script, and only they can have a cwd in our temp dirs.
    for dir in "${TMPDIRS[@]}"; do
        wait_gone "$dir" under
        rm -rf -- "$dir"
    done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

ms_since() { # ms_since START_NS [END_NS]
    local end=${2:-$(date +%s%N)}
    echo $(((end - $1) / 1000000))
}

# ---------------------------------------------------------------------------
# Bare PostgreSQL (the floor)

as_pg() { setpriv --reuid="$PG_USER" --regid="$PG_GROUP" --init-groups -- "$@"; }

floor_new() { # floor_new VAR: a temp dir of the postgres account's, with a password file and a socket dir
    local _fd
    new_dir _fd
    mkdir "$_fd/sock"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$_fd/pwfile"
    chmod 0600 "$_fd/pwfile"
    chown -R "$PG_USER:$PG_GROUP" "$_fd"
    printf -v "$1" '%s' "$_fd"
}

floor_initdb() { # floor_initdb DIR
    as_pg "$PG_BIN/initdb" -D "$1/data" --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 --data-checksums -U postgres --pwfile "$1/pwfile" \
        >>"$1/initdb.log" 2>&1 || {
        tail -n 20 "$1/initdb.log" >&2
        die "initdb failed in $1"
    }
}

floor_start() { # floor_start DIR: sets FLOOR_PID
    # Not through as_pg: a backgrounded function is a subshell whose pid is
    # not the postmaster's. setpriv execs, so $! is the postmaster itself.
    setpriv --reuid="$PG_USER" --regid="$PG_GROUP" --init-groups -- \
        "$PG_BIN/postgres" -D "$1/data" -k "$1/sock" -c listen_addresses='' "${FLOOR_OPTS[@]}" \
        >>"$1/postgres.log" 2>&1 </dev/null &
    FLOOR_PID=$!
    CHILDREN[$FLOOR_PID]=postgres
}

floor_wait() { # floor_wait DIR TIMEOUT: until pg_isready; sets READY_NS
    local deadline=$(($(date +%s) + $2))
    while :; do
        if "$PG_BIN/pg_isready" -q -h "$1/sock" -t 5; then
            READY_NS=$(date +%s%N)
            return 0
        fi
        alive "$FLOOR_PID" || {
            tail -n 20 "$1/postgres.log" >&2
            die "bare postgres in $1 exited before accepting connections"
        }
        (($(date +%s) < deadline)) || die "bare postgres in $1 not ready within $2 s"
        sleep "$POLL"
    done
}

floor_stop() { # SIGINT (fast shutdown), as the daemon does
    stop_child "$FLOOR_PID" INT QUIT KILL
    [[ $REAPED_RC == 0 ]] || log "warning: bare postgres exited with status $REAPED_RC on SIGINT"
}

# ---------------------------------------------------------------------------
# The daemon

CONFIG_DIR=""
new_dir CONFIG_DIR
CONFIG="$CONFIG_DIR/pagodirecto.toml"
printf '# benches/startup.sh: built-in defaults\n' >"$CONFIG"

pd() { "$PD_BIN" --config "$CONFIG" "$@"; }

daemon_spawn() { # daemon_spawn DIR: sets DAEMON_PID and SPAWN_NS
    rm -f "$1/run/http.addr" # never poll a previous run's port
    DAEMON_LOG="$CONFIG_DIR/daemon-$(basename "$1").log"
    SPAWN_NS=$(date +%s%N)
    "$PD_BIN" --config "$CONFIG" --data-dir "$1" run --listen 127.0.0.1:0 \
        >>"$DAEMON_LOG" 2>&1 </dev/null &
    DAEMON_PID=$!
    CHILDREN[$DAEMON_PID]=daemon
}

daemon_died() {
    log "--- daemon output (last 30 lines) ---"
    tail -n 30 "$DAEMON_LOG" >&2
    die "$*"
}

http_code() { # http_code ADDR PATH
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1$2" || true
}

daemon_wait() { # daemon_wait DIR TIMEOUT: until /ready is 200; sets READY_NS, ADDR
    local deadline=$(($(date +%s) + $2)) code
    ADDR=""
    while :; do
        [[ -z $ADDR && -s $1/run/http.addr ]] && ADDR=$(tr -d ' \n' <"$1/run/http.addr")
        if [[ -n $ADDR ]]; then
            code=$(http_code "$ADDR" /ready)
            if [[ $code == 200 ]]; then
                READY_NS=$(date +%s%N)
                return 0
            fi
        fi
        alive "$DAEMON_PID" || daemon_died "the daemon exited before /ready was 200"
        (($(date +%s) < deadline)) || daemon_died "/ready not 200 within $2 s"
        sleep "$POLL"
    done
}

daemon_stop() { # SIGTERM, as systemd does; must exit 0 with postgres gone
    local dir=$1
    stop_child "$DAEMON_PID" TERM KILL
    [[ $REAPED_RC == 0 ]] || daemon_died "the daemon exited with status $REAPED_RC on SIGTERM"
    [[ -z $(procs_in "$dir/pg/data") ]] || {
        wait_gone "$dir/pg/data"
        die "postgres processes outlived the daemon's SIGTERM stop in $dir"
    }
}

status_json() { pd --data-dir "$1" status --json 2>/dev/null; }

sum_kb() { # sum_kb FIELD FILE_SUFFIX PIDS...: sums "FIELD: N kB" over /proc/PID/FILE
    local field=$1 file=$2 total=0 pid v
    shift 2
    for pid in "$@"; do
        v=$(awk -v f="$field:" '$1 == f { print $2; exit }' "/proc/$pid/$file" 2>/dev/null)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# recover DIR: kills the postmaster of the ready daemon and waits until /ready
# is 200 again. Sets REC_MS, NOTICE_MS, PROOF, BACKOFF, REC_LOG_LINE.
#
# Right after the kill /ready can still answer 200 from before the daemon
# noticed the crash: postgres_up is still true and the pooled connection's
# backend has not exited yet. So a 200 counts only if the poll that got it
# started after the crash was proven noticed, by whichever comes first:
#  - a 503 from /ready: the daemon either has cleared postgres_up or found its
#    pooled connection dead. Either way the next 200 needs a live connection,
#    and with that one gone (no traffic here: the pool holds one connection)
#    it must be a new one, which only the restarted postmaster can accept,
#    which the daemon only starts after it reaped the old one. A timeout or a
#    refused connection (000) proves nothing and is not counted.
#  - `status --json` showing restarts incremented, asked only when a 200 comes
#    before any 503 (the outage could fall between two polls). The counter
#    moves only once the supervisor has reaped the killed postmaster.
# The 503 usually comes first (the daemon reaps the postmaster on SIGCHLD, and
# a poll takes ~10 ms), so no status RPC runs during the recovery: the status
# RPC runs a health check in the daemon's event loop, and calling it in the
# middle of the crash could itself slow the daemon down. NOTICE_MS (and PROOF)
# show when and how the notice was proven, so a late proof shows in the output.
recover() {
    local dir=$1 st pgpid restarts ready t0 tn="" code r new deadline
    st=$(status_json "$dir") || daemon_died "status --json failed"
    ready=$(jq -r '.ready' <<<"$st")
    pgpid=$(jq -r '.postgres.pid // empty' <<<"$st")
    restarts=$(jq -r '.postgres.restarts' <<<"$st")
    [[ $ready == true && $pgpid =~ ^[0-9]+$ ]] || daemon_died "not ready before the kill: $st"
    deadline=$(($(date +%s) + START_TIMEOUT))
    REC_LOG_LINE=$(log_lines "$DAEMON_LOG")
    PROOF=""
    t0=$(date +%s%N)
    kill -KILL "$pgpid" || die "cannot SIGKILL postmaster $pgpid"
    while :; do
        code=$(http_code "$ADDR" /ready)
        if [[ -n $tn ]]; then
            if [[ $code == 200 ]]; then
                READY_NS=$(date +%s%N)
                break
            fi
        elif [[ $code == 503 ]]; then
            tn=$(date +%s%N) PROOF="a 503"
        elif [[ $code == 200 ]]; then
            r=$(status_json "$dir" | jq -r '.postgres.restarts // empty' 2>/dev/null)
            [[ $r =~ ^[0-9]+$ ]] && ((r > restarts)) && tn=$(date +%s%N) PROOF="restarts+1"
        fi
        alive "$DAEMON_PID" || daemon_died "the daemon exited after its postmaster was killed"
        (($(date +%s) < deadline)) || daemon_died "not ready again within ${START_TIMEOUT} s of the kill"
        sleep "$POLL"
    done
    REC_MS=$(ms_since "$t0" "$READY_NS")
    NOTICE_MS=$(ms_since "$t0" "$tn")
    st=$(status_json "$dir") || daemon_died "status --json failed after recovery"
    new=$(jq -r '.postgres.pid // empty' <<<"$st")
    r=$(jq -r '.postgres.restarts' <<<"$st")
    [[ $r == $((restarts + 1)) && -n $new && $new != "$pgpid" ]] ||
        daemon_died "unexpected state after recovery (restarts $restarts -> $r, pid $pgpid -> $new)"
    BACKOFF=$(grep 'restarting' "$DAEMON_LOG" | tail -n 1 | sed -n 's/.*delay=\([^ ]*\).*/\1/p')
}

# checkpoint_info LOG FIRST_LINE: what the first checkpoint logged from
# FIRST_LINE on wrote. After a crash that is the end-of-recovery checkpoint,
# done before connections are accepted: it shows how much the crash left to
# redo, so two recoveries can be compared on equal terms.
checkpoint_info() {
    local info
    info=$(tail -n "+$2" "$1" 2>/dev/null | grep 'checkpoint complete' | tail -n 1 |
        sed -n 's/.*wrote \([0-9]*\) buffers.*total=\([0-9.]*\) s.*/\1 buffers, \2 s/p')
    echo "end-of-recovery checkpoint: ${info:-not logged}"
}
log_lines() { # the number of the line after the last one in a log
    echo $(($(wc -l <"$1" 2>/dev/null || echo 0) + 1))
}

progress_recover() { # the progress line of a daemon recovery
    progress "$1" "$2" "$REC_MS ms ($(checkpoint_info "$DAEMON_LOG" "$REC_LOG_LINE"); crash noticed: $PROOF after $NOTICE_MS ms; backoff ${BACKOFF:-?})"
}

# ---------------------------------------------------------------------------
# Statistics and the table

stats() { # stats VALUES...: "median min max" (median of an even count: mean of the middle two)
    local -a s
    mapfile -t s < <(printf '%s\n' "$@" | sort -n)
    local n=${#s[@]} med
    if ((n % 2)); then med=${s[n / 2]}; else med=$(((s[n / 2 - 1] + s[n / 2]) / 2)); fi
    echo "$med ${s[0]} ${s[n - 1]}"
}

progress() { log "$(printf '  %-24s run %d/%d: %s' "$1" "$2" "$RUNS" "$3")"; }

# cpu_busy: how busy the CPUs are, in percent over 1 s; called while none of
# our processes runs, so it is other work on the machine.
cpu_busy() {
    local -a a b
    read -ra a </proc/stat
    sleep 1
    read -ra b </proc/stat
    # cpu user nice system idle iowait irq softirq steal
    local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
    local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
    echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}

declare -a FLOOR_COLD=() FLOOR_WARM=() FLOOR_REC=() COLD=() WARM=() REC=() FAST_REC=()
declare -a RSS_KB=() PG_RSS_KB=() PG_PSS_KB=()

log "pagodirecto startup benchmark: RUNS=$RUNS, $(nproc) cores"
log "daemon: $PD_BIN (source: $PD_SOURCE, built $(date -r "$PD_BIN" +%H:%M:%S)); floor: $PG_BIN"
BUSY_START=$(cpu_busy)
BENCH_START=$(date +%s)

# The floor and the daemon alternate run by run, so that a change in the
# machine's load during the benchmark hits both sides of each comparison.

# 1. floor cold and 4. cold start --------------------------------------------
log "cold: bare initdb + postgres, then pagodirecto run on an empty data dir"
FLOOR_DIR="" DATA_DIR=""
for ((i = 1; i <= RUNS; i++)); do
    floor_new dir
    t0=$(date +%s%N)
    floor_initdb "$dir"
    floor_start "$dir"
    floor_wait "$dir" "$COLD_TIMEOUT"
    FLOOR_COLD+=("$(ms_since "$t0" "$READY_NS")")
    floor_stop
    if [[ -z $FLOOR_DIR ]]; then FLOOR_DIR=$dir; else rm -rf -- "$dir"; fi

    new_dir dir
    daemon_spawn "$dir"
    daemon_wait "$dir" "$COLD_TIMEOUT"
    COLD+=("$(ms_since "$SPAWN_NS" "$READY_NS")")
    if [[ -z $DATA_DIR ]]; then
        DATA_DIR=$dir
        bin_dir=$(status_json "$dir" | jq -r '.postgres.bin_dir')
        [[ $bin_dir -ef $PG_BIN ]] ||
            log "warning: the daemon runs postgres from $bin_dir, the floor from $PG_BIN"
    fi
    daemon_stop "$dir"
    [[ $dir == "$DATA_DIR" ]] || rm -rf -- "$dir"
    progress "cold" "$i" "floor ${FLOOR_COLD[-1]} ms, daemon ${COLD[-1]} ms"
done

# 2. floor warm, 5. warm start and 7. idle RSS --------------------------------
log "warm: the same clusters again after a clean stop"
for ((i = 1; i <= RUNS; i++)); do
    t0=$(date +%s%N)
    floor_start "$FLOOR_DIR"
    floor_wait "$FLOOR_DIR" "$START_TIMEOUT"
    FLOOR_WARM+=("$(ms_since "$t0" "$READY_NS")")
    floor_stop

    daemon_spawn "$DATA_DIR"
    daemon_wait "$DATA_DIR" "$START_TIMEOUT"
    WARM+=("$(ms_since "$SPAWN_NS" "$READY_NS")")
    pause 3 # idle: no requests after the first 200
    RSS_KB+=("$(sum_kb VmRSS status "$DAEMON_PID")")
    mapfile -t pg_pids < <(procs_in "$DATA_DIR/pg/data")
    PG_RSS_KB+=("$(sum_kb VmRSS status "${pg_pids[@]}")")
    PG_PSS_KB+=("$(sum_kb Pss smaps_rollup "${pg_pids[@]}")")
    daemon_stop "$DATA_DIR"
    progress "warm" "$i" "floor ${FLOOR_WARM[-1]} ms, daemon ${WARM[-1]} ms; idle RSS daemon ${RSS_KB[-1]} kB, postgres (${#pg_pids[@]} procs) ${PG_RSS_KB[-1]} kB RSS / ${PG_PSS_KB[-1]} kB PSS"
done

# 3. floor crash recovery and 6. recovery -------------------------------------
# Each run: a bare postmaster is started next to the running daemon; once both
# postmasters have been up STABLE_SECS (idle), the bare one is killed and
# recovered (timed) and stopped, then the daemon's is killed (timed). Same
# idle time before each crash, so both replay what an idle cluster writes in
# that time; nothing is timed while the other side is doing anything.
log "recovery: SIGKILL of each postmaster after ${STABLE_SECS} s of uptime (~$((RUNS * (STABLE_SECS + 3))) s)"
daemon_spawn "$DATA_DIR"
daemon_wait "$DATA_DIR" "$START_TIMEOUT"
for ((i = 1; i <= RUNS; i++)); do
    # The daemon's latest first 200 (READY_NS) comes after its current
    # postmaster's spawn: a lower bound on the uptime its supervisor measures.
    pg_up_ns=$READY_NS
    floor_start "$FLOOR_DIR"
    floor_wait "$FLOOR_DIR" "$START_TIMEOUT"
    ((READY_NS > pg_up_ns)) && pg_up_ns=$READY_NS
    wait_ns=$((pg_up_ns + STABLE_SECS * 1000000000 - $(date +%s%N)))
    ((wait_ns > 0)) && pause "$((wait_ns / 1000000000)).$(printf '%09d' $((wait_ns % 1000000000)))"

    first_line=$(log_lines "$FLOOR_DIR/postgres.log")
    t0=$(date +%s%N)
    kill -KILL "$FLOOR_PID"
    reap "$FLOOR_PID"
    wait_gone "$FLOOR_DIR/data" || die "backends of the killed postmaster would not die"
    floor_start "$FLOOR_DIR"
    floor_wait "$FLOOR_DIR" "$START_TIMEOUT"
    FLOOR_REC+=("$(ms_since "$t0" "$READY_NS")")
    floor_ckpt=$(checkpoint_info "$FLOOR_DIR/postgres.log" "$first_line")
    floor_stop
    pause 1 # let the bare cluster's shutdown writes settle before the next kill

    recover "$DATA_DIR"
    REC+=("$REC_MS")
    progress "recovery, floor" "$i" "${FLOOR_REC[-1]} ms ($floor_ckpt)"
    progress_recover "recovery, daemon" "$i"
done
daemon_stop "$DATA_DIR"
rm -rf -- "$FLOOR_DIR"

# 6b. (information) a crash right after start: the supervisor's first fast
# failure, restarted after its 100 ms backoff. A fresh daemon each run, so the
# fast-failure count (5 in a row end the daemon) never exceeds 1.
if [[ $FAST_RECOVERY == 1 ]]; then
    log "recovery, information: SIGKILL of the daemon's postmaster right after start"
    for ((i = 1; i <= RUNS; i++)); do
        daemon_spawn "$DATA_DIR"
        daemon_wait "$DATA_DIR" "$START_TIMEOUT"
        recover "$DATA_DIR"
        FAST_REC+=("$REC_MS")
        progress_recover "recovery, fast failure" "$i"
        daemon_stop "$DATA_DIR"
    done
fi

# ---------------------------------------------------------------------------
# Report

BUSY_END=$(cpu_busy)

read -r fc_med fc_min fc_max < <(stats "${FLOOR_COLD[@]}")
read -r fw_med fw_min fw_max < <(stats "${FLOOR_WARM[@]}")
read -r fr_med fr_min fr_max < <(stats "${FLOOR_REC[@]}")
read -r c_med c_min c_max < <(stats "${COLD[@]}")
read -r w_med w_min w_max < <(stats "${WARM[@]}")
read -r r_med r_min r_max < <(stats "${REC[@]}")
read -r m_med m_min m_max < <(stats "${RSS_KB[@]}")
read -r pr_med pr_min pr_max < <(stats "${PG_RSS_KB[@]}")
read -r pp_med pp_min pp_max < <(stats "${PG_PSS_KB[@]}")

verdict() { if (($1 <= $2)); then echo PASS; else echo MISS; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "x%.2f", a / b; else print "-" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

row() { printf '%-40s %8s %8s %8s  %-34s %s\n' "$@"; }

echo
echo "pagodirecto startup benchmark: $RUNS runs each, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ), took $(($(date +%s) - BENCH_START)) s"
echo "daemon $("$PD_BIN" --version 2>/dev/null | head -n 1) ($PD_BIN, source: $PD_SOURCE); postgres $("$PG_BIN/postgres" --version | awk '{ print $3 }') from $PG_BIN"
echo "CPU busy with other work: ${BUSY_START}% before, ${BUSY_END}% after the runs"
if ((BUSY_START >= 15 || BUSY_END >= 15)); then
    echo "warning: the machine was busy; other work skews these figures: rerun on an idle machine"
fi
echo
row "measurement" "median" "min" "max" "vs floor / target" "result"
row "floor cold: initdb + start (ms)" "$fc_med" "$fc_min" "$fc_max" "" ""
row "floor warm: start (ms)" "$fw_med" "$fw_min" "$fw_max" "" ""
row "floor crash recovery (ms)" "$fr_med" "$fr_min" "$fr_max" "" ""
row "cold start: spawn -> /ready 200 (ms)" "$c_med" "$c_min" "$c_max" \
    "$(ratio "$c_med" "$fc_med") floor, $(printf '%+d' $((c_med - fc_med))) <= +$COLD_OVER_FLOOR_MS" \
    "$(verdict "$c_med" $((fc_med + COLD_OVER_FLOOR_MS)))"
row "warm start: spawn -> /ready 200 (ms)" "$w_med" "$w_min" "$w_max" \
    "$(ratio "$w_med" "$fw_med") floor, <= $WARM_MAX_MS" \
    "$(verdict "$w_med" "$WARM_MAX_MS")"
row "recovery: SIGKILL pg -> /ready 200 (ms)" "$r_med" "$r_min" "$r_max" \
    "$(ratio "$r_med" "$fr_med") floor, $(printf '%+d' $((r_med - fr_med))) <= +$RECOVERY_OVER_FLOOR_MS" \
    "$(verdict "$r_med" $((fr_med + RECOVERY_OVER_FLOOR_MS)))"
if ((${#FAST_REC[@]})); then
    read -r q_med q_min q_max < <(stats "${FAST_REC[@]}")
    row "recovery, crash <30 s after start (ms)" "$q_med" "$q_min" "$q_max" \
        "$(ratio "$q_med" "$fr_med") floor (info: backoff)" "info"
fi
row "idle RSS, daemon only (MiB)" "$(mib "$m_med")" "$(mib "$m_min")" "$(mib "$m_max")" \
    "<= $(mib "$RSS_MAX_KB")" "$(verdict "$m_med" "$RSS_MAX_KB")"
row "idle RSS, postgres summed (MiB)" "$(mib "$pr_med")" "$(mib "$pr_min")" "$(mib "$pr_max")" \
    "info; PSS sum $(mib "$pp_med") MiB" "info"
echo
echo "floor = bare initdb/postgres: the daemon's initdb options, postgres' defaults${FLOOR_OPTS[*]:+ + ${FLOOR_OPTS[*]}};"
echo "the daemon adds its pagodirecto.conf (e.g. recovery_init_sync_method=syncfs; the default is fsync);"
echo "recovery kills wait ${STABLE_SECS} s of postgres uptime (the supervisor's 30 s stable_after);"
echo "a crash <30 s after start is a fast failure: the supervisor waits 100 ms before restarting;"
echo "idle RSS is read 3 s after the first 200 of each warm start; RSS sums count shared memory"
echo "once per process (PSS splits it)."
