#!/usr/bin/env bash
# The whole test suite, with its set-up: on Debian (as root) it installs the
# servers the tests start when they are missing, then runs every test.
#   bash scripts/test-all.sh            # what CI runs, after its checks
#   bash scripts/test-all.sh --test it redis_shared::   # arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== system packages the tests need"
# The Redis tests start their own redis-server (and a Redis Cluster of
# them), the replica tests their own PostgreSQL cluster (initdb + pg_ctl):
# without them they fail (CI never skips).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The cluster tests join their nodes with `redis-cli --cluster create`.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
# The dashboard's browser tests drive a headless Chromium through chromedriver.
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        # The packages start system servers; the tests run their own.
        service redis-server stop >/dev/null 2>&1 || true
        service postgresql stop >/dev/null 2>&1 || true
    else
        echo "missing ${missing[*]}, which cannot be installed here (need root and apt-get)" >&2
        exit 1
    fi
fi
redis-server --version
redis-cli --version
ls -d /usr/lib/postgresql/*/bin 2>/dev/null || command -v initdb
chromium --version
chromedriver --version

# The replica tests' S3-compatible bucket: moto in server mode, from PyPI,
# in a virtual environment of its own (Debian's Python refuses global pip).
if ! command -v moto_server >/dev/null 2>&1; then
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/edgecache-ci/moto"
    if [ ! -x "$venv/bin/moto_server" ]; then
        python3 -m venv "$venv" || {
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
        }
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.1'
    fi
    export PATH="$venv/bin:$PATH"
fi
moto_server --help >/dev/null && echo "moto_server: $(command -v moto_server)"

echo "== cargo test --workspace --all-features"
cargo test --workspace --all-features "$@"
