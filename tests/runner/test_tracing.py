"""W3C trace context travels in NATS headers: a run's events join the dispatcher's trace."""

from __future__ import annotations

from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider

from cronbus.shared.bus import MSG_ID, Bus
from cronbus.shared.events import JobSpec, RunDispatched, ShellExecutor, encode, run_id_for
from cronbus.shared.settings import Settings
from cronbus.shared.tracing import inject_headers
from tests.runner.support import final_outcome, new_slot, running


async def test_run_events_carry_the_trace_of_their_dispatch(settings: Settings):
    tracer = TracerProvider().get_tracer("test")
    bus = await Bus.open(settings, "test")
    try:
        slot = new_slot()
        command = "echo traced; sleep 0.3; echo done"
        spec = JobSpec(name="traced", schedule="@every 1h", executor=ShellExecutor(command=command))
        event = RunDispatched(
            run_id=run_id_for("traced", slot), job_id="traced", slot=slot, pool="default", spec=spec
        )
        with tracer.start_as_current_span("dispatch") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            headers = inject_headers({MSG_ID: "traced:1"})
        assert headers["traceparent"].split("-")[1] == trace_id
        await bus.js.publish(
            settings.names.dispatch_subject("default", "traced"), encode(event), headers=headers
        )

        async with running(settings):
            finished = await final_outcome(bus.js, settings, event.run_id)
        assert finished.status == "succeeded"

        names = settings.names
        seen: list[str] = []
        for stream, subject in (
            (names.runs_stream, names.run_subject("traced", event.run_id)),
            (names.logs_stream, names.log_subject(event.run_id)),
        ):
            seq = 1
            while True:
                try:
                    msg = await bus.js.get_msg(stream, seq=seq, subject=subject, next=True)
                except NotFoundError:
                    break
                seq = (msg.seq or seq) + 1
                traceparent = (msg.headers or {}).get("traceparent", "")
                seen.append(traceparent.split("-")[1] if traceparent else "(none)")
        # Output that outlives the first flush goes to LOGS: its chunks join the trace too.
        assert len(seen) >= 4  # started, at least two chunks, finished
        assert set(seen) == {trace_id}, "every run event joins the dispatch's trace"
    finally:
        await bus.close()
