"""Flask served by the worker: routing (non-ASCII paths too), forms, and a streaming route."""

from __future__ import annotations

import time

import httpx
import pytest
from server import Gunicorn

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def srv():
    with Gunicorn("flask_app:app", "--threads", "2") as g:
        yield g


def test_routes(srv):
    with httpx.Client(base_url=f"http://{srv.host}:{srv.port}") as client:
        assert client.get("/").text == "flask ok"
        assert client.get("/caf%C3%A9").text == "café route"
        assert client.get("/missing").status_code == 404
        resp = client.post("/echo", data={"a": "1", "b": "ü"})
        assert resp.json() == {"form": {"a": "1", "b": "ü"}, "len": len("a=1&b=%C3%BC")}


def test_streaming_route_arrives_spread_out(srv):
    arrivals = []
    with httpx.stream("GET", f"http://{srv.host}:{srv.port}/events", timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] > 0.5  # not one burst at the end
