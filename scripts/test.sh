#!/usr/bin/env bash
# The whole test suite: checks of the deployment files (alert rules, compose file), Rust unit and behaviour
# tests on both backends (embedded SQLite; Postgres + Redis; TLS to both), then the real-client tests with
# the official libsignal under Node, then the demo page in headless Chromium.
#
# Postgres and Redis: uses SEALPOST_TEST_DATABASE_URL / SEALPOST_TEST_REDIS_URL (default: the local ones).
# When one is unreachable, starts a throwaway instance from the installed binaries in a temp dir and stops it
# afterwards; when the binaries are missing, fails with the line that installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

DB_URL="${SEALPOST_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
REDIS_URL="${SEALPOST_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
SCRATCH="$(mktemp -d -t sealpost-test.XXXXXX)"
CLEANUP=()
cleanup() {
    for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" || true; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# A cluster node also listens on its port + 10000, so both must be free and the port at most 55535.
free_cluster_port() {
    python3 - <<'PY'
import random, socket
for _ in range(200):
    port = random.randint(20000, 45000)
    try:
        for p in (port, port + 10000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
        print(port)
        break
    except OSError:
        continue
PY
}

postgres_up() { command -v psql >/dev/null && psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; }
redis_up() { command -v redis-cli >/dev/null && [ "$(redis-cli -u "$1" ping 2>/dev/null)" = "PONG" ]; }

find_pg_bin() {
    local name="$1" dir
    if command -v "$name" >/dev/null; then command -v "$name"; return; fi
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
    done
    return 1
}

if ! postgres_up "$DB_URL"; then
    command -v psql >/dev/null || fail "psql is missing; install with: apt-get install -y postgresql postgresql-client"
    INITDB="$(find_pg_bin initdb)" && PG_CTL="$(find_pg_bin pg_ctl)" ||
        fail "Postgres is not reachable at $DB_URL and initdb/pg_ctl are not installed; install with: apt-get install -y postgresql"
    port="$(free_port)"
    data="$SCRATCH/pg"
    mkdir -p "$data"
    as_owner=()
    if [ "$(id -u)" = 0 ]; then
        # Postgres refuses to run as root: run it as the postgres (or nobody) user.
        owner=postgres; id postgres >/dev/null 2>&1 || owner=nobody
        chown "$owner" "$SCRATCH" "$data"; chmod 755 "$SCRATCH"
        as_owner=(runuser -u "$owner" --)
    fi
    log "Postgres not reachable at $DB_URL; starting a throwaway one on port $port"
    "${as_owner[@]}" "$INITDB" -D "$data" -U postgres --auth=trust >"$SCRATCH/initdb.log" 2>&1 ||
        { cat "$SCRATCH/initdb.log" >&2; fail "initdb failed"; }
    "${as_owner[@]}" "$PG_CTL" -D "$data" -l "$SCRATCH/pg.log" -w \
        -o "-p $port -k $SCRATCH -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
        { cat "$SCRATCH/pg.log" >&2; fail "Postgres did not start"; }
    CLEANUP+=("${as_owner[*]} $PG_CTL -D $data -m immediate stop >/dev/null")
    psql "postgres://postgres@127.0.0.1:$port/postgres" -qc 'CREATE DATABASE test' >/dev/null
    DB_URL="postgres://postgres@127.0.0.1:$port/test"
fi

if ! redis_up "$REDIS_URL"; then
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
        fail "Redis is not reachable at $REDIS_URL and redis-server is not installed; install with: apt-get install -y redis-server"
    port="$(free_port)"
    log "Redis not reachable at $REDIS_URL; starting a throwaway one on port $port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --pidfile "$SCRATCH/redis.pid" --logfile "$SCRATCH/redis.log" --dir "$SCRATCH" >/dev/null
    CLEANUP+=("redis-cli -p $port shutdown nosave >/dev/null 2>&1")
    for _ in $(seq 50); do redis_up "redis://127.0.0.1:$port" && break; sleep 0.1; done
    REDIS_URL="redis://127.0.0.1:$port"
    redis_up "$REDIS_URL" || fail "Redis did not start (see $SCRATCH/redis.log)"
fi
export SEALPOST_TEST_DATABASE_URL="$DB_URL" SEALPOST_TEST_REDIS_URL="$REDIS_URL"

# Scale-out attachments go to an S3-compatible bucket: a throwaway moto server (installed from PyPI into a
# cached virtualenv the first time).
log "starting a throwaway S3-compatible server (moto) for the attachment tests"
moto="$(scripts/s3-test-server.sh "$SCRATCH/moto.log")" || fail "could not start the S3 test server (see above)"
CLEANUP+=("kill ${moto%% *}")
export SEALPOST_TEST_S3_ENDPOINT="${moto#* }"

# The calls tests run a coturn of their own (Debian's package), installed here when it is missing.
if ! command -v turnserver >/dev/null || ! command -v turnutils_uclient >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing coturn for the calls tests"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn; } >"$SCRATCH/apt-coturn.log" 2>&1 ||
            { cat "$SCRATCH/apt-coturn.log" >&2; fail "could not install coturn; install with: apt-get install -y coturn"; }
    else
        fail "the calls tests need coturn; install with: apt-get install -y coturn"
    fi
fi

# The demo page's tests drive the system's Chromium (Debian's package), installed here when it is missing.
CHROMIUM="${SEALPOST_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing chromium for the demo page's browser tests"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$SCRATCH/apt-chromium.log" 2>&1 ||
            { cat "$SCRATCH/apt-chromium.log" >&2; fail "could not install chromium; install with: apt-get update && apt-get install -y chromium"; }
    else
        fail "the demo page's browser tests need Chromium at $CHROMIUM; install with: apt-get update && apt-get install -y chromium"
    fi
fi

# The outage tests start, kill and freeze Redis and Postgres servers of their own.
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    fail "the outage tests need redis-server and redis-cli; install with: apt-get install -y redis-server"
find_pg_bin initdb >/dev/null && find_pg_bin pg_ctl >/dev/null ||
    fail "the outage tests need initdb and pg_ctl; install with: apt-get install -y postgresql"

command -v node >/dev/null && command -v npm >/dev/null ||
    fail "Node.js is missing; install with: apt-get install -y nodejs npm"
log "installing the Node test client's locked dependencies"
(cd tests/client && npm ci --no-audit --no-fund --loglevel=error)
log "installing the browser tests' locked dependencies (playwright-core, jsqr, pngjs)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# Deployment files: alert rules through promtool (Debian's prometheus package), the compose file through
# `docker compose config` (no daemon needed). The container image itself is not built here.
install_or_fail() { # install_or_fail COMMAND PACKAGE WHY
    command -v "$1" >/dev/null && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing $2 for $3"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >"$SCRATCH/apt-$2.log" 2>&1 ||
            { cat "$SCRATCH/apt-$2.log" >&2; fail "could not install $2; install with: apt-get update && apt-get install -y $2"; }
    else
        fail "$3 needs $1; install with: apt-get update && apt-get install -y $2"
    fi
}
log "alert rules (promtool check rules)"
install_or_fail promtool prometheus "the alert-rule check"
promtool check rules deploy/prometheus/alerts.yml
log "docker-compose.yml (compose config, with throwaway secrets)"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    echo "NOTE: the docker compose plugin is missing; checking with Debian's docker-compose instead" >&2
    install_or_fail docker-compose docker-compose "the compose check"
    compose=(docker-compose)
fi
deploy/make-secrets.sh "$SCRATCH/secrets" >/dev/null 2>&1
SEALPOST_SECRETS_DIR="$SCRATCH/secrets" "${compose[@]}" -f docker-compose.yml config >"$SCRATCH/compose.yml" ||
    fail "docker-compose.yml does not validate"
python3 scripts/check-compose.py "$SCRATCH/compose.yml"

log "structure of src/ (no import circle between files, no file over 400 lines but the tables)"
python3 scripts/check-structure.py

log "Rust tests (unit, behaviour suite on embedded and scale-out)"
cargo build --bins
cargo test --all-targets

# The scale-out suite again on a three-node Redis Cluster, through the same code path (fred's cluster
# configuration from a redis-cluster:// URL).
log "scale-out behaviour suite on a throwaway three-node Redis Cluster"
cluster_ports=()
for _ in 1 2 3; do
    port="$(free_cluster_port)"
    mkdir -p "$SCRATCH/cluster-$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$SCRATCH/cluster-$port/nodes.conf" \
        --save '' --appendonly no --daemonize yes --dir "$SCRATCH/cluster-$port" --logfile "$SCRATCH/cluster-$port/log" >/dev/null
    CLEANUP+=("redis-cli -p $port shutdown nosave >/dev/null 2>&1")
    cluster_ports+=("$port")
done
for port in "${cluster_ports[@]}"; do
    for _ in $(seq 50); do redis_up "redis://127.0.0.1:$port" && break; sleep 0.1; done
done
redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$SCRATCH/cluster-create.log" 2>&1 ||
    { cat "$SCRATCH/cluster-create.log" >&2; fail "could not create the Redis Cluster"; }
for _ in $(seq 100); do
    redis-cli -p "${cluster_ports[0]}" cluster info | grep -q 'cluster_state:ok' && break
    sleep 0.1
done
SEALPOST_TEST_REDIS_URL="redis-cluster://127.0.0.1:${cluster_ports[0]}?node=127.0.0.1:${cluster_ports[1]}&node=127.0.0.1:${cluster_ports[2]}" \
    cargo test --test behaviour scale_out

log "real-client tests (official libsignal under Node) on both backends"
SEALPOST_BIN="$PWD/target/debug/sealpost" npm --prefix tests/client test

log "the demo page in headless Chromium: a QR-initiated call, direct and relay-only through coturn"
SEALPOST_BIN="$PWD/target/debug/sealpost" SEALPOST_CHROMIUM="$CHROMIUM" SEALPOST_DEMO_ARTIFACTS="$PWD/target/demo-artifacts" \
    npm --prefix tests/browser test

log "load tool smoke run (every figure produced, nothing lost) on both backends"
SEALPOST_BIN="$PWD/target/debug/sealpost" cargo run --quiet --example load -- --smoke --backend both \
    --json "$SCRATCH/bench-smoke.json"

# The Node tests leave their own schemas behind; drop them so the test database does not grow.
psql "$DB_URL" -Atqc "SELECT 'DROP SCHEMA \"' || nspname || '\" CASCADE;' FROM pg_namespace WHERE nspname LIKE 'node\_%'" |
    psql "$DB_URL" -q >/dev/null 2>&1 || true
log "all tests passed"
