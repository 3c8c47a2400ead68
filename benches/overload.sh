#!/usr/bin/env bash
# The overload benchmark (issue #5): 1000 concurrent keep-alive connections
# against GET /api/v1/customers?limit=50 (authenticated, --demo data) for a
# fixed time, with [server] max_concurrent_requests far below that (32).
# Prints: whether the daemon stayed up, its peak RSS (VmHWM) before and after,
# how many requests were shed with 503 and how fast those answers came, and
# the p99 of admitted (200) requests against an unloaded run (4 connections).
# Two overload runs: a flood (every 503 is retried at once: the CPU goes to
# refusing) and polite clients (a 503 waits for its Retry-After, as browsers
# and our web app's client do).
#
# The client is examples/overload.rs (wrk cannot split latency by status).
# Not run by CI. Needs curl. As root the daemon runs PostgreSQL as the
# `postgres` account, as in production.
#
#   benches/overload.sh                     # 30 s per measurement
#   DURATION=60 LIMIT=64 benches/overload.sh
#   SKIP_BUILD=1 benches/overload.sh        # reuse the last release build
#
# Everything it starts is stopped on exit, by pid; the data dir is removed.
set -euo pipefail

DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-1000}
UNLOADED=${UNLOADED:-4}
LIMIT=${LIMIT:-32}
USER_EMAIL=${USER_EMAIL:-agent@andes.example}

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${PD_BIN:-$target/release/pagodirecto}
client=$target/release/examples/overload

command -v curl >/dev/null || { echo "overload.sh: needs curl" >&2; exit 1; }
if [[ -z ${SKIP_BUILD:-} ]]; then
    echo "== building release (daemon and load generator)"
    (cd "$repo" && cargo build --release --bin pagodirecto --example overload)
fi
# 1000 client sockets plus 1000 server sockets in this one shell's children.
ulimit -n 8192 2>/dev/null || true

data=$(mktemp -d /tmp/pd-overload.XXXX)
daemon_pid=
cleanup() {
    local status=$?
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
    exit "$status"
}
trap cleanup EXIT INT TERM

echo "== starting pagodirecto run --demo (max_concurrent_requests = $LIMIT) on $data"
# One load generator on one address: lift the per-client rate limit so the
# concurrency limit is what answers, not the rate limiter's 429s.
PAGODIRECTO_SERVER__RATE_LIMIT_PER_MINUTE=100000000 \
PAGODIRECTO_SERVER__MAX_CONCURRENT_REQUESTS=$LIMIT \
PAGODIRECTO_LOGGING__LEVEL=warn \
"$bin" run --demo --listen 127.0.0.1:0 --data-dir "$data" >"$data/daemon.out" 2>&1 &
daemon_pid=$!
addr=
for _ in $(seq 600); do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "overload.sh: the daemon exited:" >&2; cat "$data/daemon.out" >&2; exit 1
    fi
    if [[ -s $data/run/http.addr ]] && curl -fs "http://$(cat "$data/run/http.addr")/ready" >/dev/null; then
        addr=$(cat "$data/run/http.addr")
        break
    fi
    sleep 0.1
done
[[ -n $addr ]] || { echo "overload.sh: not ready in 60 s" >&2; cat "$data/daemon.out" >&2; exit 1; }

password=$(grep -o 'password [0-9a-f]*' "$data/secrets/demo-users.txt" | cut -d' ' -f2)
token=$(curl -fs -X POST "http://$addr/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\": \"$USER_EMAIL\", \"password\": \"$password\"}" |
    sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[[ -n $token ]] || { echo "overload.sh: login as $USER_EMAIL failed" >&2; exit 1; }
path="/api/v1/customers?limit=50"

hwm() { awk '/^VmHWM/ {print $2}' "/proc/$daemon_pid/status"; }   # KiB
rss() { awk '/^VmRSS/ {print $2}' "/proc/$daemon_pid/status"; }
# The daemon's own latency histogram (from /metrics, loopback may read it):
# what a request cost inside the server, without the client's queueing.
metrics() { curl -fs "http://$addr/metrics" | grep '^pagodirecto_http_request_duration_seconds_bucket{route="/api/v1/customers",method="GET"'; }
# server_pct BEFORE AFTER STATUS P: the bucket bound (ms) under which P of the
# requests with STATUS between the two snapshots fell.
server_pct() {
    awk -v st="status=\"$3\"" -v p="$4" '
        index($0, st) { match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
                        if (FILENAME == ARGV[1]) before[le] = $2; else { after[le] = $2; order[++n] = le } }
        END { total = after["+Inf"] - before["+Inf"]; if (total <= 0) { print "-"; exit }
              for (i = 1; i <= n; i++) { le = order[i]; if (after[le] - before[le] >= p * total) {
                  if (le == "+Inf") print "> last bucket"; else printf "<= %g\n", le * 1000; exit } } }' "$1" "$2"
}

echo "== warm-up 5s, $UNLOADED connections"
"$client" "$addr" "$path" "$token" "$UNLOADED" 5 >/dev/null
echo "== unloaded: $UNLOADED connections, ${DURATION}s"
unloaded=$("$client" "$addr" "$path" "$token" "$UNLOADED" "$DURATION")
echo "$unloaded"
hwm_before=$(hwm) rss_before=$(rss)

echo "== overload: $CONNECTIONS connections, ${DURATION}s, limit $LIMIT in flight"
# RSS sampled every 100 ms meanwhile, next to the kernel's high-water mark.
( peak=0; while kill -0 "$daemon_pid" 2>/dev/null; do r=$(rss); (( r > peak )) && peak=$r && echo "$peak" >"$data/peak"; sleep 0.1; done ) &
sampler=$!
metrics >"$data/m0"
loaded=$("$client" "$addr" "$path" "$token" "$CONNECTIONS" "$DURATION")
echo "$loaded"
metrics >"$data/m1"
echo "== overload, polite clients (a 503 waits for its Retry-After): $CONNECTIONS connections, ${DURATION}s"
polite=$("$client" "$addr" "$path" "$token" "$CONNECTIONS" "$DURATION" polite)
echo "$polite"
metrics >"$data/m2"
inside="in the server (histogram buckets, ms): flood 200 p99 $(server_pct "$data/m0" "$data/m1" 200 0.99), 503 p99 $(server_pct "$data/m0" "$data/m1" 503 0.99); polite 200 p99 $(server_pct "$data/m1" "$data/m2" 200 0.99), 503 p99 $(server_pct "$data/m1" "$data/m2" 503 0.99)"
kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
peak=$(cat "$data/peak" 2>/dev/null || echo 0)
hwm_after=$(hwm)

up=no
kill -0 "$daemon_pid" 2>/dev/null && curl -fs "http://$addr/ready" >/dev/null && up=yes
after=$("$client" "$addr" "$path" "$token" "$UNLOADED" 5)

awk -v u="$unloaded" -v l="$loaded" -v p="$polite" -v pk="$peak" -v a="$after" -v up="$up" -v hb="$hwm_before" -v ha="$hwm_after" -v rb="$rss_before" \
    -v c="$CONNECTIONS" -v lim="$LIMIT" -v d="$DURATION" -v cpus="$(nproc)" -v load="$(cut -d' ' -f1 /proc/loadavg)" '
function get(s, k,   m) { if (match(s, " " k "=[^ ]*")) return substr(s, RSTART + length(k) + 2, RLENGTH - length(k) - 2); return 0 }
BEGIN {
    printf "\n== results (%d CPUs shared by daemon, postgres and the client; load average %s after)\n", cpus, load
    printf "daemon up and ready after the overload: %s\n", up
    printf "daemon peak RSS (VmHWM): %.1f MiB before the overload (RSS %.1f MiB), %.1f MiB after (highest RSS sampled during: %.1f MiB)\n", hb / 1024, rb / 1024, ha / 1024, pk / 1024
    printf "unloaded (%s connections): %s req/s, all 200: %s, p50 %s ms, p99 %s ms\n", get(u, "connections"), get(u, "rps"), get(u, "s200_count"), get(u, "s200_p50_ms"), get(u, "s200_p99_ms")
    printf "overload (%d connections, limit %d, %ds): %s responses, %s req/s, connect errors %s, I/O errors %s\n", c, lim, d, get(l, "responses"), get(l, "rps"), get(l, "connect_errors"), get(l, "io_errors")
    printf "  admitted 200: %s, p50 %s ms, p99 %s ms\n", get(l, "s200_count"), get(l, "s200_p50_ms"), get(l, "s200_p99_ms")
    printf "  shed 503:     %s, p50 %s ms, p99 %s ms, max %s ms\n", get(l, "s503_count"), get(l, "s503_p50_ms"), get(l, "s503_p99_ms"), get(l, "s503_max_ms")
    printf "overload, polite clients (%d connections, 503 then wait Retry-After): %s responses, %s req/s\n", c, get(p, "responses"), get(p, "rps")
    printf "  admitted 200: %s, p50 %s ms, p99 %s ms\n", get(p, "s200_count"), get(p, "s200_p50_ms"), get(p, "s200_p99_ms")
    printf "  shed 503:     %s, p50 %s ms, p99 %s ms, max %s ms\n", get(p, "s503_count"), get(p, "s503_p50_ms"), get(p, "s503_p99_ms"), get(p, "s503_max_ms")
    printf "after (%s connections, 5 s): p99 %s ms\n", get(a, "connections"), get(a, "s200_p99_ms")
}'
echo "$inside"
