#!/usr/bin/env bash
# Content reads through one `edgecache serve` replica on PostgreSQL and an
# S3 bucket (moto): req/s of a hot 1 KiB resource with `wrk`, the replica
# and the database on core 0, the load on core 1, and the database
# transactions the reads cost. Compare builds by passing their binaries:
#
#   cargo build --release -p edgecache-cli
#   bash benches/replica-reads.sh target/release/edgecache [OTHER_BINARY…]
#
# Needs PostgreSQL (initdb, pg_ctl), moto_server, wrk, python3 and taskset;
# `apt-get install -y postgresql wrk` and `pip install 'moto[server]'`.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 EDGECACHE_BINARY [EDGECACHE_BINARY…]" >&2; exit 2; }
for tool in initdb pg_ctl psql moto_server wrk python3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (see the comment at the top of $0)" >&2; exit 1; }
done

work=$(mktemp -d)
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres "$work"; as_pg=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port); s3_port=$(free_port); origin_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "${as_pg[@]}" pg_ctl -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"${as_pg[@]}" initdb -D "$work/pg" -U edgecache --auth=trust >/dev/null
taskset -c 0 "${as_pg[@]}" pg_ctl -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
moto_server -H 127.0.0.1 -p "$s3_port" >/dev/null 2>&1 & pids+=($!)
mkdir -p "$work/origin" && head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 >"$work/origin/item"
python3 -m http.server -d "$work/origin" -b 127.0.0.1 "$origin_port" >/dev/null 2>&1 & pids+=($!)
until curl -sf -X PUT "http://127.0.0.1:$s3_port/reads" >/dev/null; do sleep 0.2; done

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
run=0
for binary in "$@"; do
  run=$((run + 1))
  psql -h 127.0.0.1 -p "$pg_port" -U edgecache -d postgres -qc "CREATE DATABASE run$run" >/dev/null
  database="postgres://edgecache@127.0.0.1:$pg_port/run$run"
  taskset -c 0 "$binary" serve --index "$database" --blobs "s3://reads/run$run" \
    --s3-endpoint "http://127.0.0.1:$s3_port" --allow-private-origins --listen "127.0.0.1:0" \
    2>"$work/serve$run.log" & server=$!; pids+=($server)
  address=""
  for _ in $(seq 100); do
    address=$(grep -o 'on http://[0-9.:]*' "$work/serve$run.log" | head -1 | sed 's/on http:\/\///' || true)
    [ -n "$address" ] && break; sleep 0.2
  done
  [ -n "$address" ] || { cat "$work/serve$run.log"; exit 1; }
  rid=$(curl -sf -X PUT "http://$address/v1/resources" -H 'content-type: application/json' \
    -d "{\"url\": \"http://127.0.0.1:$origin_port/item\", \"strategy\": {\"kind\": \"never\"}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  url="http://$address/v1/resources/$rid/content"
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ]; do sleep 0.2; done
  count() {
    sleep 1.5 # backends report their counts when idle, at most once a second
    psql -h 127.0.0.1 -p "$pg_port" -U edgecache -d "run$run" -Atc \
      "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
  }
  before=$(count)
  requests=$(taskset -c 1 wrk -t1 -c64 -d8s "$url" | awk '/requests in/ {print $1}')
  after=$(count)
  echo "$binary: $((requests / 8)) req/s over 8 s, $(((after - before) * 1000 / requests)) database transactions per 1,000 reads"
  kill "$server"; wait "$server" 2>/dev/null || true
done
