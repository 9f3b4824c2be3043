"""Secret values never leave the runner in a run's output, even split across reads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cronbus.runner.masking import MASK, Masker
from cronbus.runner.output import Chunker
from cronbus.shared.bus import Bus
from cronbus.shared.events import ShellExecutor
from cronbus.shared.settings import Settings
from tests.runner.support import dispatch, final_outcome, output_of, output_parts, running

SECRETS = ["hunter2-secret", "hunter2", "tok-ABCDEF"]


def _through(masker: Masker, pieces: list[bytes]) -> bytes:
    return b"".join(masker.feed(p) for p in pieces) + masker.finish()


def test_whole_and_split_occurrences_are_masked():
    text = b"pw=hunter2-secret; short=hunter2; token tok-ABCDEF.\n"
    expected = b"pw=***; short=***; token ***.\n"
    assert _through(Masker(SECRETS), [text]) == expected
    # Every way of cutting the text in two, and byte by byte.
    for cut in range(len(text) + 1):
        assert _through(Masker(SECRETS), [text[:cut], text[cut:]]) == expected, cut
    assert _through(Masker(SECRETS), [bytes([b]) for b in text]) == expected


def test_only_a_possible_start_of_a_secret_is_kept_back():
    masker = Masker(SECRETS)
    # A line that cannot begin a secret goes out at once (live output is not delayed).
    assert masker.feed(b"hello\n") == b"hello\n"
    assert masker.feed(b"value: hunt") == b"value: "
    assert masker.held == len(b"hunt")
    assert masker.feed(b"er2-secret\n") == MASK + b"\n"
    # At the end, what was kept back is released as it was.
    assert masker.feed(b"tok-ABC") == b""
    assert masker.finish() == b"tok-ABC"
    assert Masker([]).feed(b"hunter2") == b"hunter2"


@given(
    parts=st.lists(
        st.one_of(st.sampled_from([s.encode() for s in SECRETS]), st.binary(max_size=12)), max_size=20
    ),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_masking_does_not_depend_on_how_output_is_split(parts: list[bytes], cuts: list[int]):
    text = b"".join(parts)
    whole = _through(Masker(SECRETS), [text])
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    assert _through(Masker(SECRETS), pieces) == whole
    for secret in SECRETS:
        assert secret.encode() not in whole.replace(MASK, b"\0")


def test_the_chunker_masks_each_stream_and_counts_what_the_job_wrote():
    chunker = Chunker(cap=1000, secrets=SECRETS)
    chunker.add("stdout", b"a hunt")
    chunker.add("stderr", b"tok-ABCDEF!\n")
    chunker.add("stdout", b"er2 b\n")
    chunker.note("cronbus: header value tok-ABCDEF")
    chunker.finish()
    chunks = chunker.take()
    by_stream = {s: b"".join(c.data for c in chunks if c.stream == s) for s in ("stdout", "stderr", "system")}
    assert by_stream == {
        "stdout": b"a *** b\n",
        "stderr": b"***!\n",
        "system": b"cronbus: header value ***\n",
    }
    assert chunker.total_bytes == len(b"a hunt" + b"tok-ABCDEF!\n" + b"er2 b\n")


async def test_a_shell_runs_secret_env_values_are_masked_in_its_output(settings: Settings):
    bus = await Bus.open(settings, "test")
    secret = "s3cr3t-value-0123456789"
    try:
        async with running(settings):
            simple = await dispatch(
                bus.js,
                settings,
                ShellExecutor(
                    command='echo "password is $DB_PASSWORD"; echo "$DB_PASSWORD" >&2; echo "user $DB_USER"',
                    env={"DB_PASSWORD": secret, "DB_USER": "cron-user"},
                    secrets=["DB_PASSWORD"],
                ),
            )
            # The job writes the secret in two pieces, well apart, so the runner reads them
            # separately (and publishes the first before the second exists).
            split = await dispatch(
                bus.js,
                settings,
                ShellExecutor(
                    command='printf "key=%s" "${TOKEN%??????????}"; sleep 0.5; printf "%s end\\n" '
                    '"${TOKEN#?????????????}"',
                    env={"TOKEN": secret},
                    secrets=["TOKEN"],
                ),
            )
            result = await final_outcome(bus.js, settings, simple.run_id)
            assert result.status == "succeeded"
            chunks = await output_parts(bus.js, settings, simple.run_id)
            stdout = b"".join(c.data for c in chunks if c.stream == "stdout")
            stderr = b"".join(c.data for c in chunks if c.stream == "stderr")
            assert (stdout, stderr) == (b"password is ***\nuser cron-user\n", b"***\n")

            result = await final_outcome(bus.js, settings, split.run_id)
            assert result.status == "succeeded"
            chunks = await output_parts(bus.js, settings, split.run_id)
            assert b"".join(c.data for c in chunks) == b"key=*** end\n"
            assert all(secret[:5].encode() not in c.data for c in chunks)
            assert await output_of(bus.js, settings, split.run_id) == b"key=*** end\n"
    finally:
        await bus.close()
