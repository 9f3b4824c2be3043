"""HTTP controllers: they translate requests into calls on Jobs/Runs and answers back, and
nothing else. Each route names the role it needs in `opt`; auth.authorize enforces it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from cronbus.api.audit import (
    CRONTAB_IMPORTED,
    JOB_BACKFILLED,
    RUN_CANCEL_REQUESTED,
    RUN_REQUESTED,
    AuditLog,
)
from cronbus.api.auth import caller
from cronbus.api.body import strict_jobs, strict_patch
from cronbus.api.domain import FieldError, InvalidInput, Role, check_id
from cronbus.api.history import History, JobFilter
from cronbus.api.jobs import Jobs
from cronbus.api.problems import PROBLEM_JSON, RETRY_AFTER
from cronbus.api.runs import Runs
from cronbus.api.schemas import (
    BackfillIn,
    BackfillOut,
    CancelRequested,
    CrontabImport,
    Health,
    JobBatch,
    JobIn,
    JobOut,
    JobPage,
    JobPatch,
    JobStateName,
    Problem,
    RunAccepted,
    RunOut,
    RunPage,
    SlotList,
    StatusOut,
)
from cronbus.api.validation import MAX_BATCH, JobsBody

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="items per page (1-200)")]
PageCursor = Annotated[
    str | None,
    QueryParameter(
        description="the `next` value of the previous page (opaque, base64url); omit for the first page",
        schema_extra={"pattern": "^[A-Za-z0-9_-]*$"},
    ),
]
# Ids are UUIDs; the schema says so, and a malformed one still gets the API's own 422.
JobId = Annotated[str, PathParameter(description="the job's id", format="uuid")]
RunId = Annotated[str, PathParameter(description="the run's id", format="uuid")]
IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match", description='the revision you read (e.g. `3` or `"3"`); 409 if it changed'
    ),
]
CreateKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        description="repeat a create with the same key (up to 200 characters) to create its jobs once",
    ),
]
RequestId = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        description="repeat a request with the same key (up to 200 printable characters) to dispatch once",
        schema_extra={"maxLength": 200},
    ),
]

_PROBLEM_WHEN = {
    400: "the body is not JSON",
    401: "no API key, or a wrong or revoked one",
    403: "the key's role may not do this",
    404: "no such job or run",
    409: "the job changed since the revision named",
    422: "invalid input: `errors` names each field and reason",
    503: "NATS or the database is unreachable right now",
    504: "the history did not reach the revision named in time",
}


def problems(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem details a route can answer (401 and 503 always)."""
    return {
        code: ResponseSpec(
            data_container=Problem,
            description=_PROBLEM_WHEN[code],
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for code in sorted({401, 503, *codes})
    }


VIEWER = {"role": Role.viewer}
OPERATOR = {"role": Role.operator}
ADMIN = {"role": Role.admin}
PUBLIC = {"public": True}

# Attempt numbers a run can have (the history stores them as 32-bit integers).
_MAX_ATTEMPT = 2**31 - 1
# How often a live tail checks for the end of a run, and sends a keep-alive when quiet.
_TAIL_POLL = 0.25
_KEEPALIVE_EVERY = 15.0


def _revision(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(
            [FieldError(field="If-Match", reason=f"{value!r} is not a job revision number")]
        ) from None


def _etag(job: JobOut) -> dict[str, str]:
    return {"ETag": f'"{job.revision}"'}


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]

    @post(
        "/",
        status_code=201,
        opt=ADMIN,
        responses=problems(400, 403, 422),
        summary="Create a job, or up to 1000 jobs at once",
        description=f"A job object answers the job. An array of 1 to {MAX_BATCH} job objects answers "
        '`{"items": [job, ...]}` in the same order; every item is checked first, and one invalid '
        "item rejects the whole array (`errors[].field` such as `[17].schedule`). With "
        "`Idempotency-Key`, repeating the request creates each job once and answers the same jobs. "
        "With `?dry_run=true` nothing is created: 200 with the jobs as they would be, or the 422.",
        before_request=strict_jobs,
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[JobsBody],
        jobs: NamedDependency[Jobs],
        idempotency_key: CreateKey = None,
        dry_run: Annotated[
            bool,
            QueryParameter(
                description="check the input and answer 200 with what would be created; append nothing"
            ),
        ] = False,
    ) -> Response[JobOut | JobBatch]:
        by = caller(request)
        status = 200 if dry_run else 201
        if isinstance(data, JobIn):
            job = await jobs.create(data, by, request_key=idempotency_key, dry_run=dry_run)
            headers = {} if dry_run else {"Location": f"/v1/jobs/{job.id}", **_etag(job)}
            return Response(job, status_code=status, headers=headers)
        made = await jobs.create_many(data, by, request_key=idempotency_key, dry_run=dry_run)
        return Response(JobBatch(items=list(made)), status_code=status)

    @get("/", opt=VIEWER, responses=problems(403, 422), summary="List jobs (oldest first)")
    async def list_jobs(
        self,
        jobs: NamedDependency[Jobs],
        cursor: PageCursor = None,
        limit: Limit = 50,
        job_state: Annotated[
            JobStateName | None,
            QueryParameter(
                name="state", description="only jobs in this state: scheduled, paused, finished or failing"
            ),
        ] = None,
        label: Annotated[
            list[str] | None,
            QueryParameter(
                description="only jobs with this label: `key=value`, or `key` (any value); repeatable"
            ),
        ] = None,
        pool: Annotated[str | None, QueryParameter(description="only jobs of this pool")] = None,
        q: Annotated[
            str | None,
            QueryParameter(max_length=200, description="only jobs whose name holds this text (any case)"),
        ] = None,
    ) -> JobPage:
        where = JobFilter(state=job_state, labels=label or (), pool=pool, q=q)
        return await jobs.list(cursor=cursor, limit=limit, where=where)

    @get("/{job_id:str}", opt=VIEWER, responses=problems(403, 404, 422, 504), summary="Get a job")
    async def get_job(
        self,
        job_id: JobId,
        jobs: NamedDependency[Jobs],
        revision: Annotated[
            int | None,
            QueryParameter(ge=1, description="wait (up to 5 s) until the history has this revision"),
        ] = None,
    ) -> Response[JobOut]:
        job = await jobs.get(job_id, revision=revision)
        return Response(job, headers=_etag(job))

    @patch(
        "/{job_id:str}",
        opt=ADMIN,
        responses=problems(400, 403, 404, 409, 422),
        summary="Change a job (only the fields given)",
        before_request=strict_patch,
    )
    async def update(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        data: JSONBody[JobPatch],
        jobs: NamedDependency[Jobs],
        if_match: IfMatch = None,
    ) -> Response[JobOut]:
        job = await jobs.update(job_id, data, caller(request), if_match=_revision(if_match))
        return Response(job, headers=_etag(job))

    @delete(
        "/{job_id:str}",
        opt=ADMIN,
        responses=problems(403, 404, 409, 422),
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a job",
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        jobs: NamedDependency[Jobs],
        if_match: IfMatch = None,
    ) -> None:
        await jobs.delete(job_id, caller(request), if_match=_revision(if_match))

    @post(
        "/{job_id:str}/pause",
        opt=OPERATOR,
        responses=problems(403, 404, 409, 422),
        status_code=HTTP_200_OK,
        summary="Pause a job",
    )
    async def pause(
        self, request: Request[Any, Any, Any], job_id: JobId, jobs: NamedDependency[Jobs]
    ) -> JobOut:
        return await jobs.pause(job_id, caller(request))

    @post(
        "/{job_id:str}/resume",
        opt=OPERATOR,
        responses=problems(403, 404, 409, 422),
        status_code=HTTP_200_OK,
        summary="Resume a paused job",
    )
    async def resume(
        self, request: Request[Any, Any, Any], job_id: JobId, jobs: NamedDependency[Jobs]
    ) -> JobOut:
        return await jobs.resume(job_id, caller(request))

    @get(
        "/{job_id:str}/runs",
        opt=VIEWER,
        responses=problems(403, 404, 422),
        summary="A job's runs (newest first)",
    )
    async def runs(
        self, job_id: JobId, jobs: NamedDependency[Jobs], cursor: PageCursor = None, limit: Limit = 50
    ) -> RunPage:
        return await jobs.runs(job_id, cursor=cursor, limit=limit)

    @post(
        "/{job_id:str}/runs",
        opt=OPERATOR,
        responses=problems(403, 404, 422),
        status_code=HTTP_202_ACCEPTED,
        summary="Run a job now",
    )
    async def run_now(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        jobs: NamedDependency[Jobs],
        audit_log: NamedDependency[AuditLog],
        idempotency_key: RequestId = None,
    ) -> Response[RunAccepted]:
        by = caller(request)
        run = await jobs.run_now(job_id, by, request_id=idempotency_key)
        await audit_log.record(
            RUN_REQUESTED,
            by.name,
            job_id=run.job_id,
            detail={"run_id": run.id},
            msg_id=f"{RUN_REQUESTED}:{run.id}",
        )
        return Response(run, status_code=HTTP_202_ACCEPTED, headers={"Location": f"/v1/runs/{run.id}"})

    @post(
        "/{job_id:str}/backfill",
        opt=OPERATOR,
        responses=problems(400, 403, 404, 409, 422),
        status_code=HTTP_200_OK,
        summary="Dispatch the job's slots in a past range, each once",
        description="Every slot of the schedule in `[from, to)` (at most 10,000) is dispatched with the "
        "run id the scheduler gives it, unless it was dispatched before: those are listed in "
        "`already`. Repeating the request dispatches nothing new. The runs obey the job's overlap "
        "policy. 409 when the job is paused.",
    )
    async def backfill(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        data: JSONBody[BackfillIn],
        jobs: NamedDependency[Jobs],
        audit_log: NamedDependency[AuditLog],
    ) -> BackfillOut:
        by = caller(request)
        answer = await jobs.backfill(job_id, data, by)
        detail = {
            "from": data.from_.isoformat(),
            "to": data.to.isoformat(),
            "slots": answer.slots,
            "dispatched": len(answer.dispatched),
            "already": len(answer.already),
        }
        await audit_log.record(JOB_BACKFILLED, by.name, job_id=check_id("job", job_id), detail=detail)
        return answer

    @get(
        "/{job_id:str}/slots",
        opt=VIEWER,
        responses=problems(403, 404, 422),
        summary="Why did (or didn't) it run: every slot in a range and its outcome",
        description="Each slot of the schedule in `[from, to)` (at most 10,000): `dispatched` (with "
        "`run_id`, `status`), `skipped` (with `reason`), `missed` (with the leader `gap`) or "
        "`pending`.",
    )
    async def slots(
        self,
        job_id: JobId,
        jobs: NamedDependency[Jobs],
        from_: Annotated[
            datetime | None,
            QueryParameter(name="from", description="first instant (ISO-8601; default: a day before `to`)"),
        ] = None,
        to: Annotated[
            datetime | None, QueryParameter(description="end of the range, excluded (ISO-8601; default: now)")
        ] = None,
    ) -> SlotList:
        return await jobs.slots(job_id, from_, to)


class RunController(Controller):
    path = "/v1/runs"
    tags = ["runs"]

    @get("/{run_id:str}", opt=VIEWER, responses=problems(403, 404, 422), summary="Get a run")
    async def get_run(self, run_id: RunId, runs: NamedDependency[Runs]) -> RunOut:
        return await runs.get(run_id)

    @get(
        "/{run_id:str}/log",
        opt=VIEWER,
        responses=problems(403, 404, 422),
        media_type="text/plain; charset=utf-8",
        summary="A run's output",
    )
    async def log(
        self,
        run_id: RunId,
        runs: NamedDependency[Runs],
        attempt: Annotated[
            int | None,
            QueryParameter(ge=1, le=_MAX_ATTEMPT, description="which attempt (default: the latest)"),
        ] = None,
    ) -> bytes:
        return await runs.log(run_id, attempt=attempt)

    @get(
        "/{run_id:str}/log/stream",
        opt=VIEWER,
        responses=problems(403, 404, 422),
        media_type="text/event-stream",
        summary="A run's output, live (Server-Sent Events)",
    )
    async def stream(
        self, request: Request[Any, Any, Any], run_id: RunId, runs: NamedDependency[Runs]
    ) -> ServerSentEvent:
        chunks = await runs.tail(run_id, idle_timeout=_TAIL_POLL)
        # The first step subscribes to the streams: take it before answering, so that NATS
        # being down is a 503 rather than a stream that breaks after its 200.
        try:
            first = [await anext(chunks)]
        except StopAsyncIteration:
            first = []
        stopping: asyncio.Event = request.app.state.stopping
        return ServerSentEvent(_events(_resumed(first, chunks), stopping))

    @post(
        "/{run_id:str}/cancel",
        opt=OPERATOR,
        responses=problems(403, 404, 422),
        status_code=HTTP_202_ACCEPTED,
        summary="Cancel a run",
    )
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        run_id: RunId,
        runs: NamedDependency[Runs],
        audit_log: NamedDependency[AuditLog],
    ) -> CancelRequested:
        by = caller(request)
        answer = await runs.cancel(run_id, by)
        await audit_log.record(RUN_CANCEL_REQUESTED, by.name, detail={"run_id": answer.id})
        return answer


async def _resumed(taken: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """`rest` with the items already taken from it in front."""
    try:
        for item in taken:
            yield item
        async for item in rest:
            yield item
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()


async def _events(
    chunks: AsyncIterator[Any], stopping: asyncio.Event
) -> AsyncIterator[ServerSentEventMessage]:
    """SSE messages: `event: output` with the chunk's text, id `<attempt>:<seq>`; `event: end`."""
    quiet = 0.0
    try:
        async for chunk in chunks:
            if stopping.is_set():
                break
            if chunk is None:
                quiet += _TAIL_POLL
                if quiet >= _KEEPALIVE_EVERY:
                    quiet = 0.0
                    yield ServerSentEventMessage(comment="keep-alive")
                continue
            quiet = 0.0
            yield ServerSentEventMessage(
                data=chunk.data.decode("utf-8", errors="replace"),
                event=chunk.stream,
                id=f"{chunk.attempt}:{chunk.seq}",
            )
        yield ServerSentEventMessage(data="", event="end")
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


MAX_CRONTAB_BYTES = 1024 * 1024


class ImportController(Controller):
    path = "/v1/import"
    tags = ["jobs"]

    @post(
        "/crontab",
        opt=ADMIN,
        status_code=201,
        responses=problems(400, 403, 422),
        summary="Import a crontab (text/plain)",
        description="Each entry becomes a job (five fields or an @ macro, environment lines applied; "
        "see docs/api.md). Lines that cannot become a job are listed in `skipped` with the reason. "
        "Importing the same entries again creates nothing: they answer the jobs made the first time. "
        "`?dry_run=true` answers 200 with the jobs as they would be and appends nothing.",
    )
    async def crontab(
        self,
        request: Request[Any, Any, Any],
        jobs: NamedDependency[Jobs],
        audit_log: NamedDependency[AuditLog],
        dry_run: Annotated[bool, QueryParameter(description="preview: create nothing")] = False,
        timezone: Annotated[
            str, QueryParameter(description="zone of entries before any CRON_TZ line")
        ] = "UTC",
        pool: Annotated[str, QueryParameter(description="pool of the jobs")] = "default",
        prefix: Annotated[str, QueryParameter(description="start of every job's name")] = "crontab-",
    ) -> Response[CrontabImport]:
        raw = await request.body()
        if len(raw) > MAX_CRONTAB_BYTES:
            raise InvalidInput(
                [
                    FieldError(
                        field="body",
                        reason=f"{len(raw)} bytes; a crontab may have at most {MAX_CRONTAB_BYTES}",
                    )
                ]
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ClientException("the crontab is not UTF-8 text") from None
        by = caller(request)
        answer = await jobs.import_crontab(
            text, by, timezone=timezone, pool=pool, prefix=prefix, dry_run=dry_run
        )
        if not dry_run:
            counts = {
                "jobs": len(answer.items),
                "skipped": len(answer.skipped),
                "pool": pool,
                "prefix": prefix,
            }
            await audit_log.record(CRONTAB_IMPORTED, by.name, detail=counts)
        return Response(answer, status_code=200 if dry_run else 201)


class StatusController(Controller):
    path = "/v1/status"
    tags = ["status"]

    @get("/", opt=VIEWER, responses=problems(403), summary="Scheduler leader and runners")
    async def status(self, runs: NamedDependency[Runs]) -> StatusOut:
        return await runs.status()


class HealthController(Controller):
    tags = ["health"]

    @get("/healthz", opt=PUBLIC, summary="Liveness")
    async def healthz(self) -> Health:
        return Health(status="ok")

    @get("/readyz", opt=PUBLIC, summary="Readiness: NATS and the history database")
    async def readyz(
        self, request: Request[Any, Any, Any], history: NamedDependency[History]
    ) -> Response[Health]:
        checks: dict[str, str] = {}
        nc = request.app.state.bus.nc
        checks["nats"] = "ok" if nc.is_connected else "disconnected"
        try:
            await asyncio.wait_for(history.ping(), timeout=2.0)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        if ok:
            return Response(Health(status="ok", checks=checks))
        return Response(
            Health(status="unavailable", checks=checks),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER)},
        )


@get("/v1/openapi.json", opt=PUBLIC, include_in_schema=False, media_type="application/vnd.oai.openapi+json")
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI document (public, like the docs UI: it holds no data)."""
    schema: dict[str, Any] = request.app.openapi_schema.to_schema()
    return schema
