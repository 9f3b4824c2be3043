"""Manifests: comparing what a file says with what the server shows (pure logic)."""

from __future__ import annotations

import copy

from cronbus.shared.client.manifest import differences, exported, plan


def test_a_masked_secret_compares_equal_and_the_manifest_is_left_as_it_was() -> None:
    desired = {
        "name": "ping",
        "schedule": "@every 5m",
        "executor": {"type": "http", "url": "http://x/ping", "headers": {"Authorization": "Bearer s3cret"}},
    }
    shown = {**copy.deepcopy(desired), "id": "1", "revision": 1, "paused": False}
    shown["executor"]["headers"]["Authorization"] = "***"
    before = copy.deepcopy(desired)
    assert differences(desired, shown) == []
    assert desired == before  # the real value is still there to send


def test_units_and_defaults_do_not_count_as_changes() -> None:
    desired = {
        "name": "b",
        "schedule": "0 3 * * *",
        "timeout": "600s",
        "executor": {"type": "shell", "command": "x"},
    }
    shown = {**desired, "timeout": "10m", "retries": {"max_attempts": 1, "backoff": "10s", "multiplier": 2.0,
             "max_backoff": "1h"}, "jitter": "0s", "labels": {}}  # fmt: skip
    assert differences(desired, shown) == []
    assert differences({**desired, "timeout": "20m"}, shown) == ["timeout"]
    assert exported({**shown, "id": "1"}) == {"name": "b", "schedule": "0 3 * * *", "timeout": "10m",
                                              "executor": {"type": "shell", "command": "x"}}  # fmt: skip


def test_prune_deletes_only_what_the_manifest_does_not_name() -> None:
    current = [{"name": n, "schedule": "0 3 * * *", "executor": {"type": "shell", "command": "x"}, "id": n,
                "revision": 1} for n in ("a", "b")]  # fmt: skip
    wanted = [{"name": "a", "schedule": "0 3 * * *", "executor": {"type": "shell", "command": "x"}}]
    todo = plan(wanted, current, prune=True)
    assert [j["name"] for j in todo.delete] == ["b"] and todo.unchanged == ["a"]
