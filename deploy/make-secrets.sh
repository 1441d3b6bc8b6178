#!/usr/bin/env bash
# Creates the secret files docker-compose.yml reads, once: random Postgres and Redis passwords and the
# store URLs that carry them. Existing files are kept. Usage: deploy/make-secrets.sh [DIR]
# (default: deploy/secrets next to this script, or SEALPOST_SECRETS_DIR).
set -euo pipefail
dir="${1:-${SEALPOST_SECRETS_DIR:-$(dirname "$0")/secrets}}"
mkdir -p "$dir"
umask 077
random() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n'; }
[ -s "$dir/postgres_password" ] || random >"$dir/postgres_password"
[ -s "$dir/redis_password" ] || random >"$dir/redis_password"
[ -s "$dir/database_url" ] ||
    printf 'postgres://sealpost:%s@postgres:5432/sealpost\n' "$(cat "$dir/postgres_password")" >"$dir/database_url"
[ -s "$dir/redis_url" ] || printf 'redis://:%s@redis:6379\n' "$(cat "$dir/redis_password")" >"$dir/redis_url"
# Compose mounts these files as they are: the container users (postgres and redis read theirs as root at
# start; sealpost runs as uid 10001) must be able to read them.
if [ "$(id -u)" = 0 ]; then
    chown 10001 "$dir/database_url" "$dir/redis_url"
else
    chmod 0644 "$dir"/*
    echo "note: not root, so the secret files were made world-readable for the containers; keep $dir private" >&2
fi
echo "secrets in $dir"
