#!/usr/bin/env python3
"""Checks what docker-compose.yml promises, on the file as `docker compose config` resolved it: every
service restarts by itself, the stores and sealpost have health checks and sealpost waits for healthy
stores, coturn for a healthy sealpost, sealpost is built from the Dockerfile, Redis keeps an append-only
file, and no secret sits in an environment variable (only `…_FILE` paths under /run/secrets).
Usage: scripts/check-compose.py RESOLVED.yml"""
import sys

import yaml

problems = []


def check(ok, what):
    if not ok:
        problems.append(what)


doc = yaml.safe_load(open(sys.argv[1]))
services = doc.get("services", {})
check(set(services) >= {"sealpost", "postgres", "redis", "coturn"}, f"services missing: {sorted(services)}")
for name, service in services.items():
    check(service.get("restart") in ("unless-stopped", "always"), f"{name}: no restart policy")
for name in ("postgres", "redis", "sealpost"):
    check("test" in services.get(name, {}).get("healthcheck", {}), f"{name}: no health check")


def waits_for(name, other):
    depends = services.get(name, {}).get("depends_on", {})
    return isinstance(depends, dict) and depends.get(other, {}).get("condition") == "service_healthy"


for other in ("postgres", "redis"):
    check(waits_for("sealpost", other), f"sealpost does not wait for a healthy {other}")
check(waits_for("coturn", "sealpost"), "coturn does not wait for a healthy sealpost")
sealpost = services.get("sealpost", {})
build = sealpost.get("build")
check(build is not None, "sealpost is not built from the Dockerfile")
redis_command = " ".join(services.get("redis", {}).get("command") or [])
check("--appendonly yes" in redis_command, "redis runs without its append-only file")
environment = sealpost.get("environment", {})
for variable in ("SEALPOST_DATABASE_URL", "SEALPOST_REDIS_URL"):
    check(variable not in environment, f"{variable} given in the environment: use {variable}_FILE")
    check(str(environment.get(f"{variable}_FILE", "")).startswith("/run/secrets/"), f"{variable}_FILE not a secret")
check("POSTGRES_PASSWORD" not in services.get("postgres", {}).get("environment", {}), "Postgres password in the environment")
for value in environment.values():
    check("://" not in str(value) or "@" not in str(value), f"a credential in sealpost's environment: {value}")

if problems:
    print("docker-compose.yml: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"docker-compose.yml: {len(services)} services, restart policies, health checks and secrets as promised")
