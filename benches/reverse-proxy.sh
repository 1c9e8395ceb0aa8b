#!/usr/bin/env bash
# edgecache as a reverse proxy, beside the floor, nginx's proxy_cache and
# Varnish, in one run: each server pinned to one core, wrk (one thread, 64
# connections) on another.
#
#   bash benches/reverse-proxy.sh             # needs nginx, varnishd and wrk
#   bash benches/reverse-proxy.sh --install   # installs them first (Debian, as root)
#
# Settings (environment): ROUNDS (3), SECONDS_PER_RUN (8), CONNECTIONS (64),
# URLS (1000), BODY_BYTES (1024), MEMORY_ENTRIES (100000; 0 skips the memory
# run), SERVER_CPU (0), LOAD_CPU (1). Each cache may hold 4 GiB.
#
#   BODY_BYTES=262144 MEMORY_ENTRIES=0 bash benches/reverse-proxy.sh   # large bodies
#
# Measured, per server:
# - hits: GETs cycling over URLS paths of BODY_BYTES `max-age=3600`
#   responses, all stored beforehand;
# - misses: every GET a new path, so every request goes to the origin (an
#   axum server on the same core that answers at once) and is stored;
# - memory: resident size after MEMORY_ENTRIES entries of BODY_BYTES, on fresh
#   servers, with how many entries each holds then. nginx keeps its cache in
#   files: they are on tmpfs here, counted beside its resident size.
# Rates are the median of ROUNDS runs; the rounds visit the servers in turn
# so a slow moment of the machine touches all of them. Beside each hit rate,
# how busy wrk's core was: near 100%, the rate is as many requests as one wrk
# thread can make, and the server may have more to give (the floor usually
# does).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
CONNECTIONS=${CONNECTIONS:-64}
URLS=${URLS:-1000}
MEMORY_ENTRIES=${MEMORY_ENTRIES:-100000}
# The servers read it too.
export BODY_BYTES=${BODY_BYTES:-1024}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

if [ "${1:-}" = "--install" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx varnish wrk >/dev/null
    # The packages start system services; this script runs its own.
    service nginx stop >/dev/null 2>&1 || true
    service varnish stop >/dev/null 2>&1 || true
fi
for tool in nginx varnishd wrk taskset; do
    command -v "$tool" >/dev/null || {
        echo "$tool is missing: run with --install (Debian, as root), or install nginx, varnish and wrk" >&2
        exit 1
    }
done

cargo build --release --quiet -p edgecache-benches --bin reverse-proxy
proxy_bin="${CARGO_TARGET_DIR:-target}/release/reverse-proxy"

work=$(mktemp -d /dev/shm/edgecache-reverse-proxy.XXXXXX)
pids=()
stop_servers() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    pkill -f "varnishd.*$work" 2>/dev/null || true
    sleep 0.5
}
trap 'stop_servers; rm -rf "$work"' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {
    local port=$1
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/ready" && return 0
        sleep 0.1
    done
    echo "nothing answers on port $port" >&2
    exit 1
}

on_server_core() { taskset -c "$SERVER_CPU" "$@"; }

start_servers() {
    origin=$(free_port) floor=$(free_port) edgecache=$(free_port) nginx=$(free_port) varnish=$(free_port)
    edgecache_stats=$(free_port)
    # Started directly, not through a function, so that `$!` is the server
    # itself and stopping it does not leave it running.
    taskset -c "$SERVER_CPU" "$proxy_bin" origin "127.0.0.1:$origin" & pids+=($!)
    taskset -c "$SERVER_CPU" "$proxy_bin" floor "127.0.0.1:$floor" & pids+=($!)
    taskset -c "$SERVER_CPU" "$proxy_bin" edgecache "127.0.0.1:$edgecache" "127.0.0.1:$origin" \
        "127.0.0.1:$edgecache_stats" & pids+=($!)

    rm -rf "$work/nginx-cache" "$work/varnish"
    mkdir -p "$work/nginx-cache" "$work/nginx-temp"
    cat >"$work/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # As Debian's nginx.conf has them: hits are sent from the cache files.
    sendfile on;
    tcp_nopush on;
    client_body_temp_path $work/nginx-temp;
    proxy_temp_path $work/nginx-temp;
    proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=bench:128m max_size=4g inactive=1h use_temp_path=off;
    upstream origin { server 127.0.0.1:$origin; keepalive 64; }
    server {
        listen 127.0.0.1:$nginx backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            add_header X-Cache \$upstream_cache_status;
        }
    }
}
EOF
    on_server_core nginx -c "$work/nginx.conf"
    on_server_core varnishd -j none -n "$work/varnish" -a "127.0.0.1:$varnish" -b "127.0.0.1:$origin" \
        -s malloc,4G -p thread_pools=1 >/dev/null
    for port in $origin $floor $edgecache $nginx $varnish; do wait_for "$port"; done
}

cat >"$work/hits.lua" <<'EOF'
-- Cycles over args[2] paths under args[1], each request prepared once.
local requests, count, next_one = {}, 0, 0
function init(args)
    count = tonumber(args[2])
    for i = 0, count - 1 do requests[i] = wrk.format("GET", args[1] .. i) end
end
function request()
    next_one = (next_one + 1) % count
    return requests[next_one]
end
EOF
cat >"$work/misses.lua" <<'EOF'
-- A new path under args[1] on every request.
local prefix, n = "", 0
function init(args) prefix = args[1] end
function request()
    n = n + 1
    return wrk.format("GET", prefix .. n)
end
EOF

# wrk PORT SCRIPT SECONDS ARGS... -> requests per second
load() {
    local port=$1 script=$2 duration=$3
    shift 3
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${duration}s" -s "$work/$script" "http://127.0.0.1:$port" -- "$@" |
        awk '/^Requests\/sec:/ { print $2 }'
}

# Resident KiB of processes whose command line matches.
rss_kib() {
    local total=0 pid
    for pid in $(pgrep -f "$1"); do
        total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# Busy and total time of one CPU so far, in ticks.
cpu_ticks() { awk -v cpu="cpu$1" '$1 == cpu { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

names=(floor edgecache nginx varnish)
port_of() { echo "${!1}"; }

echo "== servers on CPU $SERVER_CPU, wrk -t1 -c$CONNECTIONS on CPU $LOAD_CPU, $ROUNDS rounds of ${SECONDS_PER_RUN}s"
start_servers
for name in "${names[@]}"; do
    load "$(port_of "$name")" hits.lua 2 /hit/ "$URLS" >/dev/null # store every URL
done
declare -A hits misses load_busy
for round in $(seq "$ROUNDS"); do
    for name in "${names[@]}"; do
        read -r busy_before total_before < <(cpu_ticks "$LOAD_CPU")
        rate=$(load "$(port_of "$name")" hits.lua "$SECONDS_PER_RUN" /hit/ "$URLS")
        read -r busy_after total_after < <(cpu_ticks "$LOAD_CPU")
        hits[$name]+="$rate "
        ticks=$((total_after - total_before))
        load_busy[$name]+="$((100 * (busy_after - busy_before) / (ticks > 0 ? ticks : 1))) "
        rate="(no cache)"
        if [ "$name" != floor ]; then
            rate=$(load "$(port_of "$name")" misses.lua "$SECONDS_PER_RUN" "/miss/$round/")
            misses[$name]+="$rate "
        fi
        echo "round $round $name: hits $(echo "${hits[$name]}" | awk '{ print $NF }') req/s, misses $rate req/s"
    done
done
stop_servers

declare -A before after entries
if [ "$MEMORY_ENTRIES" -gt 0 ]; then
    echo "== memory: $MEMORY_ENTRIES entries of $BODY_BYTES bytes, fresh servers"
    start_servers
    before[edgecache]=$(rss_kib "reverse-proxy edgecache 127.0.0.1:$edgecache")
    before[nginx]=$(rss_kib "nginx.*$work")
    before[varnish]=$(rss_kib "varnishd.*$work")
    for name in edgecache nginx varnish; do
        # Enough time to request every path at least once, even at 4k misses/s
        # (Varnish stores about 7k a second here); later rounds are hits.
        load "$(port_of "$name")" hits.lua $((MEMORY_ENTRIES / 4000 + 2)) /memory/ "$MEMORY_ENTRIES" >/dev/null
    done
    after[edgecache]=$(rss_kib "reverse-proxy edgecache 127.0.0.1:$edgecache")
    after[nginx]=$(rss_kib "nginx.*$work")
    after[varnish]=$(rss_kib "varnishd.*$work")
    nginx_files=$(du -sk "$work/nginx-cache" | cut -f1)
    # Each figure says how many entries it holds, so a server that stored
    # fewer is seen at once.
    entries[edgecache]=$(curl -s "http://127.0.0.1:$edgecache_stats/entries")
    entries[nginx]=$(find "$work/nginx-cache" -type f | wc -l)
    entries[varnish]=$(varnishstat -n "$work/varnish" -1 -f MAIN.n_object | awk '{ print $2 }')
    stop_servers
fi

floor_hits=$(echo "${hits[floor]}" | tr ' ' '\n' | grep . | median)
nginx_hits=$(echo "${hits[nginx]}" | tr ' ' '\n' | grep . | median)
nginx_misses=$(echo "${misses[nginx]}" | tr ' ' '\n' | grep . | median)
echo
echo "== from this run (median of $ROUNDS, answers of $BODY_BYTES bytes)"
printf '| %-45s | %10s | %8s | %8s | %8s | %12s | %8s | %s\n' "" "hits req/s" "wrk busy" "x floor" "x nginx" "misses req/s" "x nginx" "memory after $MEMORY_ENTRIES x $BODY_BYTES bytes"
printf '| %-45s | %10s | %8s | %8s | %8s | %12s | %8s | %s\n' --- --- --- --- --- --- --- ---
for name in "${names[@]}"; do
    h=$(echo "${hits[$name]}" | tr ' ' '\n' | grep . | median)
    busy="$(echo "${load_busy[$name]}" | tr ' ' '\n' | grep . | median)%"
    m=$(echo "${misses[$name]:-}" | tr ' ' '\n' | grep . | median || true)
    case $name in
    floor) label="floor: axum answering from memory, no cache" memory="" ;;
    edgecache) label="edgecache: axum + CacheLayer (shared, memory)" ;;
    nginx) label="nginx proxy_cache (files on tmpfs)" ;;
    varnish) label="Varnish -s malloc" ;;
    esac
    if [ "$name" != floor ]; then
        memory="(not measured)"
        if [ "$MEMORY_ENTRIES" -gt 0 ]; then
            memory="$(((${after[$name]} - ${before[$name]}) / 1024)) MiB resident growth"
            [ "$name" = nginx ] && memory="$memory + $((nginx_files / 1024)) MiB of files"
            memory="$memory (${entries[$name]:-?} entries)"
        fi
        miss_cell=$m
        miss_ratio=$(awk -v a="$m" -v b="$nginx_misses" 'BEGIN { printf "%.2f", a / b }')
    else
        miss_cell="(no cache)" miss_ratio=""
    fi
    printf '| %-45s | %10.0f | %8s | %8s | %8s | %12s | %8s | %s\n' "$label" "$h" "$busy" \
        "$(awk -v a="$h" -v b="$floor_hits" 'BEGIN { printf "%.2f", a / b }')" \
        "$(awk -v a="$h" -v b="$nginx_hits" 'BEGIN { printf "%.2f", a / b }')" \
        "$miss_cell" "$miss_ratio" "$memory"
done
