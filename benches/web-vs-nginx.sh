#!/usr/bin/env bash
# Serves the same built web app (assets/dist) from the daemon and from
# Debian's nginx, configured like the old stack's frontend (gzip_static, one
# worker per core, the same cache headers), and loads both with the same
# generator (wrk) in one run: requests/s and p99 for index.html and for the
# largest JS bundle, with `Accept-Encoding: br, gzip`.
#
#   apt-get install nginx wrk
#   cargo build --release
#   benches/web-vs-nginx.sh [BIN]        # default target/release/pagodirecto
#
# Env: DURATION (s, default 5), CONNECTIONS (64), THREADS (2), ROUNDS (7:
# the servers take turns, and the median round is reported), FRESH (1: each
# round gets a newly started daemon and nginx's files evicted from the page
# cache, see below; 0 keeps one daemon and nginx's cached files throughout).
#
# Why FRESH: on the 2-core VM this was measured on, a server's rate on the JS
# bundle settles into one of two levels and stays there: nginx's rounds sit
# at ~34k or ~40k requests/s depending on where its files landed in the page
# cache (measured by evicting them between rounds); the daemon's at ~24–29k
# or ~37–43k for a whole process lifetime (cause not known yet). One draw per
# run decides the ratio by luck; a new draw per round, and the median, less
# so. See docs/web-benchmark.md, last section.
#
# Everything runs on 127.0.0.1 and stops by itself; the daemon gets SIGTERM,
# nginx SIGQUIT.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-${CARGO_TARGET_DIR:-target}/release/pagodirecto}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-7}
FRESH=${FRESH:-1}

for tool in nginx wrk curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx wrk curl)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no daemon binary at $BIN (cargo build --release)" >&2; exit 1; }

work=$(mktemp -d /tmp/pd-bench.XXXX)
chmod 755 "$work"
daemon_pid=
nginx_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
    [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# nginx's workers run as www-data: give them a readable copy of the build.
cp -r assets/dist "$work/dist"
chmod -R a+rX "$work/dist"

# The daemon, on its own data dir and a free port (the same data dir when
# started again: a restart, not a first start).
mkdir "$work/data"
start_daemon() {
    rm -f "$work/data/run/http.addr"
    PAGODIRECTO_BACKUP__SCHEDULE="" PAGODIRECTO_BACKUP__DRILL="" \
        "$BIN" run --data-dir "$work/data" --listen 127.0.0.1:0 >>"$work/daemon.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 600); do
        if [ -f "$work/data/run/http.addr" ] && curl -sf "http://$(cat "$work/data/run/http.addr")/ready" >/dev/null; then
            break
        fi
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log" >&2; exit 1; }
        sleep 0.2
    done
    daemon_url="http://$(cat "$work/data/run/http.addr")"
}
stop_daemon() {
    kill -TERM "$daemon_pid" && wait "$daemon_pid" || true
    daemon_pid=
}
start_daemon

# nginx like the old frontend: static files, gzip_static, immutable hashed
# assets, no-cache index.html with the SPA fallback. keepalive_requests is
# raised so that nginx, like the daemon, keeps wrk's connections open.
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    # Like the old stack's nginx image (its default config logs every
    # request), and like the daemon, which logs every request at info.
    access_log $work/nginx-access.log combined;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    gzip_static on;
    gzip_vary on;
    server {
        listen 127.0.0.1:$nginx_port;
        root $work/dist;
        location /assets/ {
            add_header Cache-Control "public, max-age=31536000, immutable";
            try_files \$uri =404;
        }
        location / {
            add_header Cache-Control "no-cache";
            try_files \$uri /index.html;
        }
    }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
nginx_url="http://127.0.0.1:$nginx_port"
for _ in $(seq 50); do curl -sf "$nginx_url/" >/dev/null && break; sleep 0.1; done

largest=$(cd "$work/dist" && find assets -name '*.js' -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2)
echo "cores: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk: $THREADS threads, $CONNECTIONS connections, ${DURATION}s per run, $ROUNDS rounds, Accept-Encoding: br, gzip"
for target in "/" "/$largest"; do
    for url in "$daemon_url" "$nginx_url"; do
        curl -s -o /dev/null -H 'Accept-Encoding: br, gzip' \
            -w "  $url$target: %{http_code}, %{size_download} bytes, " "$url$target"
        curl -s -o /dev/null -D - -H 'Accept-Encoding: br, gzip' "$url$target" \
            | tr -d '\r' | grep -i '^content-encoding' || echo "identity"
    done
done

# CPU time (clock ticks) used so far by a server: the daemon's own process
# (its postgres is idle here), or nginx's master and workers.
cpu_ticks() {
    local pids=$1
    [ "$1" = "$nginx_pid" ] && pids="$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')"
    local total=0
    for pid in $pids; do
        # utime and stime are fields 14 and 15, after the ")" that ends comm.
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$total"
}

# One wrk run → "requests/s p99 requests-per-CPU-second" (p99 in ms). The
# last figure says how much work a request costs the server, which the
# machine's other load disturbs less than requests/s.
measure() {
    local before after
    before=$(cpu_ticks "$2")
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        -H 'Accept-Encoding: br, gzip' "$1" >"$work/wrk.out"
    # Only served files count: a 429 or 503 is cheaper than the file.
    if grep -q 'Non-2xx' "$work/wrk.out"; then
        echo "web-vs-nginx.sh: $1 answered errors:" >&2
        cat "$work/wrk.out" >&2
        exit 1
    fi
    after=$(cpu_ticks "$2")
    awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" -v secs="$DURATION" '
        /Requests\/sec/ { rps = $2 }
        /^ +99%/ { v = $2; unit = v; sub(/[0-9.]+/, "", unit); sub(/[a-z]+/, "", v);
                   if (unit == "us") v /= 1000; else if (unit == "s") v *= 1000; p99 = v }
        END { cpu = ticks / hz; printf "%.0f %.2f %.0f\n", rps, p99, (cpu > 0 ? rps * secs / cpu : 0) }' "$work/wrk.out"
}

median() { sort -n | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }

# nginx rereads evicted files into newly allocated page-cache pages.
evict_nginx_files() {
    python3 -c '
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)' "$work/dist"
}

printf '\n%-28s %-8s %12s %10s %14s\n' "file" "server" "requests/s" "p99 ms" "req/CPU-s"
for target in "/" "/$largest"; do
    name=$([ "$target" = "/" ] && echo "index.html" || basename "$target")
    : >"$work/daemon.runs"
    : >"$work/nginx.runs"
    for _ in $(seq "$ROUNDS"); do
        if [ "$FRESH" = 1 ]; then
            stop_daemon
            start_daemon
            evict_nginx_files
            # One request each, so neither round starts cold.
            curl -s -o /dev/null -H 'Accept-Encoding: br, gzip' "$daemon_url$target"
            curl -s -o /dev/null -H 'Accept-Encoding: br, gzip' "$nginx_url$target"
        fi
        measure "$daemon_url$target" "$daemon_pid" >>"$work/daemon.runs"
        measure "$nginx_url$target" "$nginx_pid" >>"$work/nginx.runs"
    done
    for server in daemon nginx; do
        rps=$(cut -d' ' -f1 "$work/$server.runs" | median)
        p99=$(cut -d' ' -f2 "$work/$server.runs" | median)
        eff=$(cut -d' ' -f3 "$work/$server.runs" | median)
        printf '%-28s %-8s %12s %10s %14s   (runs: %s)\n' "$name" "$server" "$rps" "$p99" "$eff" \
            "$(tr '\n' ';' <"$work/$server.runs")"
        echo "$rps $eff" >"$work/$server.median"
    done
    read -r d_rps d_eff <"$work/daemon.median"
    read -r n_rps n_eff <"$work/nginx.median"
    awk -v d="$d_rps" -v n="$n_rps" -v de="$d_eff" -v ne="$n_eff" -v f="$name" \
        'BEGIN { printf "%-28s daemon/nginx: %.2fx requests/s, %.2fx requests per CPU-second\n", f, d / n, de / ne }'
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
