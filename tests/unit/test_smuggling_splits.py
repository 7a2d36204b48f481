"""Every request-smuggling case of tests/robustness/test_smuggling.py, in memory, split at every byte.

The master tests send each case, a canary request behind it, whole and in fixed pieces. Here the
same bytes reach a new connection (of one in-memory worker per case) as two reads split at every
byte boundary, as splits() gives them, and once whole: the outcome is the one the master test expects (the status, which app calls,
the canary never served after a refusal and served exactly once after a served case, the
connection lingering, closed or idle), and it is the same for every split. Where a request ends
must never depend on how its bytes arrive. (Bodies are kept in memory until complete here; the
master tests run the streamed-body configuration too.)
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from memory import Harness, splits
from robustness.test_smuggling import CANARY, FOLLOWED, REFUSALS, SERVED, SMUGGLED

from gunicorn_aiowsgi.boundary import ConnState

pytestmark = pytest.mark.timeout(60)


def recording(calls: list[tuple[str, bytes, str | None]]) -> Callable[..., Any]:
    """An app recording each call as the master tests' app does ("METHOD RAW_URI"), with the body
    it read and the Transfer-Encoding it was given; it answers 200 with that body."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read()
        calls.append((f"{environ['REQUEST_METHOD']} {environ['RAW_URI']}", body,
                      environ.get("HTTP_TRANSFER_ENCODING")))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class Worker:
    """One in-memory worker (a Harness) whose every split is fed to a new connection of its own."""

    def __init__(self, **settings: Any) -> None:
        self.calls: list[tuple[str, bytes, str | None]] = []
        self.harness = Harness(recording(self.calls), **settings)

    def outcome(self, reads: list[bytes]) -> dict[str, Any]:
        """What a new connection makes of these reads: what it answered, what reached the app, and
        what state it is left in (no FIN from the client: a connection still open says so)."""
        self.calls.clear()
        served = self.harness.worker.served
        client = self.harness.connect()
        for data in reads:
            client.feed(data)
        conn, transport = client.conn, client.transport
        return {
            "statuses": [status for status, _ in client.responses()],
            "calls": list(self.calls),
            "served": self.harness.worker.served - served,
            "state": conn.state,
            "closing-answers": bytes(transport.written).count(b"\r\nConnection: close\r\n"),
            "fin-written": transport.eof_written,
            "closed": transport.closed,
            # Bytes kept for a next request: none once the canary is answered. (A closed
            # connection may keep the bytes it will never read; they are dropped with it.)
            "held": bytes(conn.held) if conn.state is ConnState.IDLE else b"",
        }


def ended(statuses: list[int]) -> dict[str, Any]:
    """The connection after its last answer ended it: an error answer lingers (its FIN written,
    reading what the client still sends), any other answer closes."""
    error = statuses[-1] >= 400
    return {"state": ConnState.LINGER if error else ConnState.CLOSED, "closing-answers": 1,
            "fin-written": error, "closed": not error, "held": b""}


CASES: dict[str, tuple[bytes, dict[str, Any]]] = {}
for _name, (_data, _status) in REFUSALS.items():  # refused: nothing after it is read
    CASES[_name] = (_data, {"statuses": [_status], "names": [], **ended([_status])})
for _name, (_data, _names) in SERVED.items():  # served once, then the canary; still open
    CASES[_name] = (_data, {"statuses": [200] * (len(_names) + 1), "names": _names + ["GET /canary"],
                            "state": ConnState.IDLE, "closing-answers": 0, "fin-written": False,
                            "closed": False, "held": b""})
for _name, (_data, _statuses, _names) in FOLLOWED.items():  # answered, then what follows ends it
    CASES[_name] = (_data, {"statuses": _statuses, "names": _names, **ended(_statuses)})


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_smuggling_case_split_at_every_byte_has_the_outcome_it_has_whole(name):
    data, expected = CASES[name]
    reads = splits(data + CANARY)
    worker = Worker()
    try:
        whole = worker.outcome(reads[0])
        differ = [(len(split[0]), got) for split in reads[1:]
                  if (got := worker.outcome(split)) != whole]
    finally:
        worker.harness.close()
    names = [call for call, _body, _te in whole["calls"]]
    assert {**{key: whole[key] for key in expected if key != "names"}, "names": names} == expected
    assert whole["served"] == len(names)
    if "holding-a-request" in name:  # the request-looking bytes were body, and only body
        assert whole["calls"][0][1] == SMUGGLED
    if "underscore" in name:  # header_map "drop": Transfer_Encoding never reaches the app
        assert whole["calls"][0][2] is None
    assert not differ, (f"{name}: {len(differ)} of {len(reads) - 1} splits differ from whole "
                        f"{whole}; first, split after byte {differ[0][0]} of {data + CANARY!r}: "
                        f"{differ[0][1]}")


# The loop answers the health path itself: a head the parser stopped at (Upgrade) is judged
# before that answer, or its unframed body would be served as the next request.
HEALTH_CASES = [name for name in REFUSALS if name.startswith("upgrade-")]


@pytest.mark.parametrize("name", HEALTH_CASES)
def test_an_upgrade_head_to_the_health_path_is_refused_split_anywhere(name):
    data, status = REFUSALS[name]
    data = data.replace(b"POST /p ", b"POST /healthz ", 1)
    worker = Worker(health_path="/healthz")
    try:
        outcomes = [worker.outcome(split) for split in splits(data + CANARY)]
    finally:
        worker.harness.close()
    assert HEALTH_CASES and b"/healthz " in data
    for outcome in outcomes:
        assert (outcome["statuses"], outcome["calls"], outcome["state"]) == (
            [status], [], ConnState.LINGER)
