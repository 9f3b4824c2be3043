"""Overlap policies across runners: one record per job in KV, changed only revision-checked.

The record (key = job id in bucket `<p>_running`) lists the job's runs in flight and the one
run waiting behind them (`queue`). `admit` is the pure decision; `RunningRecords` does the
compare-and-set I/O. A holder whose runner has no presence key any more (it died) no longer
counts, so a crashed runner cannot block its jobs for longer than the presence TTL.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cronbus.shared.events import OverlapPolicy

log = logging.getLogger(__name__)


class Holder(msgspec.Struct, kw_only=True):
    runner: str
    attempt: int
    since: datetime


class RunningRecord(msgspec.Struct, kw_only=True):
    runs: dict[str, Holder] = {}
    queued: str | None = None
    queued_by: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RunningRecord)

Verdict = Literal["run", "skip", "wait"]


@dataclass(slots=True)
class Admission:
    verdict: Verdict
    record: RunningRecord
    reason: str = ""
    # Runs to cancel (policy replace).
    cancel: list[str] = field(default_factory=list)


def admit(
    record: RunningRecord,
    *,
    run_id: str,
    holder: Holder,
    policy: OverlapPolicy,
    live_runners: set[str],
) -> Admission:
    """The decision for `run_id` under `policy`, and the record to write when it runs or waits."""
    runs = {rid: h for rid, h in record.runs.items() if h.runner in live_runners and rid != run_id}
    queued, queued_by = record.queued, record.queued_by
    if queued is not None and queued != run_id and queued_by not in live_runners:
        queued, queued_by = None, None
    others = sorted(runs)
    running = RunningRecord(runs={**runs, run_id: holder}, queued=queued, queued_by=queued_by)
    if queued == run_id:
        running.queued, running.queued_by = None, None
    if not others or policy == "allow":
        return Admission("run", running)
    if policy == "skip":
        return Admission(
            "skip", record, reason=f"overlap policy 'skip': run {others[0]} of this job is still running"
        )
    if policy == "replace":
        return Admission("run", running, cancel=others)
    # queue: one run may wait behind the running ones; a second one is skipped.
    if queued in (None, run_id):
        return Admission("wait", RunningRecord(runs=runs, queued=run_id, queued_by=holder.runner))
    return Admission(
        "skip",
        record,
        reason=f"overlap policy 'queue': run {queued} of this job is already waiting behind {others[0]}",
    )


def release(record: RunningRecord, run_id: str) -> RunningRecord:
    runs = {rid: h for rid, h in record.runs.items() if rid != run_id}
    if record.queued == run_id:
        return RunningRecord(runs=runs)
    return RunningRecord(runs=runs, queued=record.queued, queued_by=record.queued_by)


class RecordConflict(RuntimeError):
    """Another runner kept changing the record; the caller retries later."""


class RunningRecords:
    """Compare-and-set access to the per-job records."""

    def __init__(self, kv: KeyValue, is_live: Callable[[str], Awaitable[bool]]) -> None:
        self.kv = kv
        self._is_live = is_live

    async def _read(self, job_id: str) -> tuple[RunningRecord, int]:
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return RunningRecord(), 0
        if not entry.value:
            return RunningRecord(), entry.revision or 0
        try:
            return _decoder.decode(entry.value), entry.revision or 0
        except msgspec.DecodeError:
            log.warning("running record of job %s is unreadable; replacing it", job_id)
            return RunningRecord(), entry.revision or 0

    async def _write(self, job_id: str, record: RunningRecord, revision: int) -> None:
        if revision == 0:
            await self.kv.create(job_id, _encoder.encode(record))
        else:
            await self.kv.update(job_id, _encoder.encode(record), last=revision)

    async def _live(self, record: RunningRecord, me: str) -> set[str]:
        names = {h.runner for h in record.runs.values()}
        if record.queued_by:
            names.add(record.queued_by)
        live = {me}
        for name in names - live:
            if await self._is_live(name):
                live.add(name)
        return live

    async def admit(self, job_id: str, run_id: str, holder: Holder, policy: OverlapPolicy) -> Admission:
        for _ in range(50):
            record, revision = await self._read(job_id)
            live = await self._live(record, holder.runner)
            admission = admit(record, run_id=run_id, holder=holder, policy=policy, live_runners=live)
            if admission.verdict == "skip":
                return admission
            try:
                await self._write(job_id, admission.record, revision)
            except KeyWrongLastSequenceError:
                continue
            return admission
        raise RecordConflict(f"running record of job {job_id} changed 50 times while admitting {run_id}")

    async def release(self, job_id: str, run_id: str) -> None:
        for _ in range(50):
            record, revision = await self._read(job_id)
            if run_id not in record.runs and record.queued != run_id:
                return
            try:
                await self._write(job_id, release(record, run_id), revision)
            except KeyWrongLastSequenceError:
                continue
            return
        raise RecordConflict(f"running record of job {job_id} changed 50 times while releasing {run_id}")
