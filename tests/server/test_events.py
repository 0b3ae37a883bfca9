"""SSE: every event has an id, a reconnect with Last-Event-ID resumes there, and queued jobs hear their position."""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator

import pytest

from tests.support.lifecycle import ServerProcess
from tests.support.servers import small_png, wait_until


class Harness:
    """A real server (the lifecycle fake engine: 0.5 s per step) over real HTTP, so a stream can be cut."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client = server.client()

    def submit(self, steps: int) -> str:
        response = self.client.post(
            f"/v1/jobs?steps={steps}", content=small_png(), headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def view(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def status(self, job_id: str) -> str:
        return self.view(job_id)["status"]

    def events(
        self, job_id: str, last_event_id: str | None = None, stop_after: int | None = None, sink: list | None = None
    ) -> list[dict[str, Any]]:
        """The stream's events (comments left out, ``sink`` fed as they come); ``stop_after`` cuts the connection."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        events: list[dict[str, Any]] = sink if sink is not None else []
        current: dict[str, Any] = {}
        with self.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=60) as stream:
            assert stream.status_code == 200, stream.read()
            for line in stream.iter_lines():
                if line == "":
                    if "event" in current:
                        current["data"] = json.loads(current["data"])
                        events.append(current)
                        if stop_after is not None and len(events) >= stop_after:
                            break
                    current = {}
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    current[name] = value[1:] if value.startswith(" ") else value
        return events


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Iterator[Harness]:  # noqa: ANN001
    server = ServerProcess(tmp_path_factory.mktemp("events") / "data", engine="fake").start()
    try:
        yield Harness(server)
    finally:
        server.stop()


def test_every_event_has_an_id_and_a_cut_stream_resumes_without_repeats(harness: Harness) -> None:
    job_id = harness.submit(steps=10)
    first = harness.events(job_id, stop_after=4)
    assert all(event.get("id") for event in first)
    assert first[-1]["event"] in {"progress", "status"}
    rest = harness.events(job_id, last_event_id=first[-1]["id"])
    assert all(event.get("id") for event in rest)
    assert [e["event"] for e in rest].count("end") == 1 and rest[-1]["event"] == "end"
    assert rest[-1]["data"]["status"] == "succeeded"
    # Nothing the client already had is sent again: the first resumed event is news.
    assert rest[0]["id"] != first[-1]["id"]
    told = [e["data"]["progress"] for e in first + rest if e["event"] == "progress"]
    assert told == sorted(told) and len(told) == len(set(told))
    if any(e["event"] == "status" and e["data"]["status"] == "running" for e in first):
        assert not any(e["event"] == "status" for e in rest)


def test_the_end_event_is_not_lost_when_the_job_ends_while_disconnected(harness: Harness) -> None:
    job_id = harness.submit(steps=3)
    cut = harness.events(job_id, stop_after=2)
    assert harness.status(job_id) in {"queued", "running"}
    wait_until(lambda: harness.status(job_id) == "succeeded")
    resumed = harness.events(job_id, last_event_id=cut[-1]["id"])
    assert [e["event"] for e in resumed] == ["end"]
    # After the end, a reconnect is told to stop (SSE's 204), so there is never a second one.
    again = harness.client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": resumed[-1]["id"]})
    assert again.status_code == 204


def test_queued_jobs_hear_each_change_of_their_position(harness: Harness) -> None:
    running = harness.submit(steps=6)  # holds the worker about 3 s
    wait_until(lambda: harness.status(running) == "running")
    ahead = harness.submit(steps=1)
    waiting = harness.submit(steps=1)
    collected: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: harness.events(waiting, sink=collected))
    reader.start()
    wait_until(lambda: collected)  # connected: it was told position 2
    assert harness.client.delete(f"/v1/jobs/{ahead}").status_code == 204
    reader.join(60)
    assert not reader.is_alive()
    kinds = [(e["event"], e["data"].get("queue_position")) for e in collected]
    assert kinds[0] == ("status", 2), kinds
    assert ("queue", 1) in kinds, kinds
    assert kinds.index(("queue", 1)) < kinds.index(("status", 0))
    assert [k for k, _ in kinds].count("end") == 1 and kinds[-1][0] == "end"
