"""A scripted client of the Gradio page over raw HTTP, as an attacker's script would call it.

``PageScript(url)`` reads the page's ``/config``, finds an event by the ``elem_id`` of the button
that triggers it, and runs it like the browser does: ``POST /gradio_api/queue/join`` with the
event's ``fn_index`` and a session hash, then reads ``/gradio_api/queue/data`` (server-sent
events) until the event completes. Checks triggered by the same click (``queue=False``) are
called through ``/gradio_api/run/predict``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import httpx

EVENT_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class EventResult:
    """How an event ended: success with output data, or the error message shown to the person."""

    success: bool
    data: list[Any] | None
    error: str | None
    title: str | None


class PageScript:
    """Runs the page's events over HTTP in one Gradio session (its own session hash)."""

    def __init__(
        self, url: str, session_hash: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.session_hash = session_hash or secrets.token_hex(6)
        self.http = httpx.Client(base_url=self.url, headers=headers or {}, timeout=60.0)
        self.config = self.http.get("/config").json()
        self._ids = {
            component["id"]: component.get("props", {}).get("elem_id")
            for component in self.config["components"]
        }

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def events_of(self, elem_id: str) -> list[dict[str, Any]]:
        """The dependencies (events) a component triggers, in their order."""
        return [
            dep
            for dep in self.config["dependencies"]
            if any(self._ids.get(target[0]) == elem_id for target in dep.get("targets", []))
        ]

    def queued_event(self, elem_id: str) -> dict[str, Any]:
        """The queued event (the step itself) triggered by a button."""
        chained = [d for d in self.config["dependencies"] if d.get("trigger_after") is not None]
        for dep in self.events_of(elem_id):
            followers = [d for d in chained if d["trigger_after"] == dep["id"]]
            if followers:
                return followers[0]
            if dep.get("queue") is not False:
                return dep
        raise LookupError(f"no queued event for #{elem_id}")

    def join(self, fn_index: int, data: list[Any]) -> httpx.Response:
        """POST /gradio_api/queue/join for an event (the raw answer)."""
        return self.http.post(
            "/gradio_api/queue/join",
            json={
                "data": data,
                "fn_index": fn_index,
                "session_hash": self.session_hash,
                "event_data": None,
                "trigger_id": None,
            },
        )

    def run(self, fn_index: int, data: list[Any]) -> EventResult:
        """Run an event through the queue and wait for its end.

        Raises:
            AssertionError: if the queue refuses the event (the answer's status and text).
        """
        joined = self.join(fn_index, data)
        assert joined.status_code == 200, f"queue/join: {joined.status_code} {joined.text}"
        event_id = joined.json()["event_id"]
        with self.http.stream(
            "GET",
            "/gradio_api/queue/data",
            params={"session_hash": self.session_hash},
            timeout=EVENT_TIMEOUT_SECONDS,
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id:
                    continue
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    if message.get("success"):
                        return EventResult(True, output.get("data"), None, None)
                    return EventResult(False, None, output.get("error"), output.get("title"))
        raise AssertionError(f"the event {event_id} never completed")

    def click(self, elem_id: str, data: list[Any] | None = None) -> EventResult:
        """Run the step a button triggers (skipping its order check, as a script may)."""
        dep = self.queued_event(elem_id)
        return self.run(dep["id"], data if data is not None else [None] * len(dep["inputs"]))
