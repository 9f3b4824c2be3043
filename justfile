# cronbus tasks. Run them through ./dev, which bootstraps uv and just first.
set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list

# create or update .venv from the lockfile, with bytecode compiled ahead (every process of
# cronbus and of the tests then starts without compiling its imports, even where
# PYTHONDONTWRITEBYTECODE keeps Python from caching them itself)
sync:
    uv sync --all-packages --locked --quiet --compile-bytecode
    uv run --no-sync python -m compileall -q libs/shared/src services/api/src services/logs/src services/runner/src services/scheduler/src tests > /dev/null

# start everything on this machine (own nats-server, SQLite, all services)
up *ARGS: sync
    uv run --no-sync cronbus up {{ARGS}}

# lint, type-check, then the whole test suite (what CI runs)
test *ARGS: sync lint
    #!/usr/bin/env bash
    set -uo pipefail
    # Two workers (a test module stays on one); CRONBUS_TEST_WORKERS=0 runs everything in one process.
    uv run --no-sync pytest -n "${CRONBUS_TEST_WORKERS:-2}" --dist loadfile {{ARGS}}
    rc=$?
    if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests; that is a failure" >&2; exit 1; fi
    exit "$rc"

# ruff (lint and format check) and mypy
lint: sync
    uv run --no-sync ruff check .
    uv run --no-sync ruff format --check .
    uv run --no-sync mypy

# format the code and apply safe lint fixes
fmt: sync
    uv run --no-sync ruff format .
    uv run --no-sync ruff check --fix .

# benchmarks: `just bench` (all), `just bench scheduler`, `just bench runner`
bench *WHICH: sync
    uv run --no-sync python -m tests.bench {{WHICH}}

# container images, one per service, built with buildah and smoke-tested: `just images [api ...]`
images *SERVICES: sync
    deploy/build-images {{SERVICES}}

# refresh the lockfile after changing dependencies
lock:
    uv lock
