"""Talking to the REST API: where it is, with which key, and problem details as one line.

The URL and key come from `--url`/`--key`, else `CRONBUS_URL`/`CRONBUS_KEY`, else the
`cronbus.json` that `cronbus up` writes in its data directory (`--data-dir`,
`CRONBUS_DATA_DIR`, default `./.cronbus`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

STATE_FILE = "cronbus.json"


class ClientError(Exception):
    """Something the user must fix; printed as one line. `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ApiError(ClientError):
    """The API answered with a problem (4xx/5xx)."""

    def __init__(self, status: int, problem: Mapping[str, Any], fallback: str = "") -> None:
        self.status = status
        self.problem = dict(problem)
        title = problem.get("title") or f"HTTP {status}"
        detail = problem.get("detail") or fallback
        fields = problem.get("errors") or []
        if fields and not detail:
            detail = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in fields)
        super().__init__(f"{title} ({status}): {detail}" if detail else f"{title} ({status})")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    key: str


def resolve_target(url: str | None, key: str | None, data_dir: str | None) -> Target:
    """Flags, then the environment, then `<data dir>/cronbus.json`."""
    url = url or os.environ.get("CRONBUS_URL") or None
    key = key or os.environ.get("CRONBUS_KEY") or None
    if url is None or key is None:
        state_path = Path(data_dir or os.environ.get("CRONBUS_DATA_DIR") or ".cronbus") / STATE_FILE
        try:
            state = json.loads(state_path.read_text())
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as exc:
            raise ClientError(f"{state_path} is unreadable ({exc})", code=2) from None
        url = url or state.get("api_url")
        key = key or state.get("admin_key")
    if not url:
        raise ClientError(
            "no API URL: pass --url, set CRONBUS_URL, or run where `cronbus up` keeps .cronbus/cronbus.json",
            code=2,
        )
    if not key:
        raise ClientError("no API key: pass --key or set CRONBUS_KEY", code=2)
    return Target(url=url.rstrip("/"), key=key)


class Api:
    """A synchronous client of `/v1`; every error becomes ApiError or ClientError."""

    def __init__(self, target: Target, timeout: float = 30.0) -> None:
        self.target = target
        self.http = httpx.Client(
            base_url=target.url,
            headers={"Authorization": f"Bearer {target.key}", "User-Agent": "cronbus-cli"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            answer = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the API at {self.target.url}: {exc}") from None
        if answer.status_code >= 400:
            raise _problem(answer)
        return answer

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.request(method, path, **kwargs)
        if answer.status_code == 204 or not answer.content:
            return None
        return answer.json()

    def pages(
        self, path: str, params: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> Iterator[Any]:
        """Every item of a paged list, following `next` cursors (at most `limit` items)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        seen = 0
        while True:
            page = self.json("GET", path, params=query)
            for item in page.get("items", []):
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page.get("next")
            if not cursor:
                return
            query["cursor"] = cursor

    def stream_lines(self, path: str) -> Iterator[str]:
        """The lines of a streamed answer (Server-Sent Events)."""
        try:
            with self.http.stream("GET", path, timeout=httpx.Timeout(30.0, read=None)) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise _problem(answer)
                yield from answer.iter_lines()
        except httpx.HTTPError as exc:
            raise ClientError(f"the live output stream broke: {exc}") from None


def _problem(answer: httpx.Response) -> ApiError:
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return ApiError(answer.status_code, body, fallback=answer.text[:200].strip())
