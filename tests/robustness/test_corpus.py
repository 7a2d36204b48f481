"""gunicorn's own request corpus replayed over a socket against a live worker.

Every `.http` case of tests/requests/{valid,invalid} in gunicorn 27.0.1's sdist (the one fixed
reference, whatever gunicorn is installed: corpus.py) is sent whole and in small pieces, then the
client half-closes.

- invalid: answered with the status gunicorn's handle_error gives (or no answer where gunicorn
  gives none), then closed, and never reaching the app (the app records every call it gets).
  An HTTP/1.1 case without Host is replayed again with a Host field added: the worker refuses
  the missing Host first (RFC 9112 section 3.2), so only then is the fault the case exists for
  (a broken chunk, say) parsed at all, and it must be refused for that fault;
- valid: each request reaches the app once with the environ gunicorn.http.wsgi.create builds
  for the same bytes, except where RFC 9112 requires a refusal (HTTP/1.1 without Host); those
  are replayed again with a Host field added, and must then match gunicorn in full.
- a case whose settings the installed gunicorn lacks (corpus.Case.adapted) is held to what the
  reference does with the settings the worker takes instead (that release's behaviour).

Each other difference is in DEVIATIONS.md, and a test below keeps that file in step.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from server import Gunicorn

from robustness import corpus
from robustness.conftest import check_log
from robustness.helpers import replay

pytestmark = pytest.mark.timeout(120)

VALID = corpus.load("valid")
INVALID = corpus.load("invalid")
SENDERS = ("whole", "pieces")
DEVIATIONS_MD = Path(__file__).with_name("DEVIATIONS.md")

# gunicorn settings the worker does not implement (it warns at startup): such requests get 400.
UNSUPPORTED = ("strip_header_spaces", "permit_obsolete_folding", "permit_unconventional_http_method")

# Cases answered otherwise than gunicorn answers them; each is explained in DEVIATIONS.md.
INVALID_SERVED = {  # refused by gunicorn, served (exactly once) here
    "rfc9112_leading_crlf_02": "GET /",
    "rfc9110_trailer_forbidden_host_01": "POST /p",
}
INVALID_OTHER_STATUS = {"013": 400}   # gunicorn 431; here 400 (obs-fold is refused first)
# Valid cases aiohttp's parser (llhttp, strict) or the worker refuses with 400, and the log line
# that says why.
VALID_REFUSED = {
    "099": "the client closed before the body was complete",
    "013": "Invalid character in chunk extensions",
    "025": "Duplicate 'Transfer-Encoding' header",
    "029": "Duplicate 'Transfer-Encoding' header",
    "030": "Duplicate 'Transfer-Encoding' header",
    "031": "Invalid method encountered",
}
MISSING_HOST = "Missing 'Host' header"
ADDED_HOST = b"Host: corpus.test\r\n"
PROXY_KEYS = ("PROXY_PROTOCOL", "PROXY_ADDR", "PROXY_PORT", "REMOTE_ADDR", "REMOTE_PORT")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One worker per distinct setting combination of the corpus, started on first use."""
    made: dict[str, tuple[Gunicorn, Path]] = {}

    def get(case: corpus.Case) -> tuple[Gunicorn, Path]:
        key = case.config_text
        if key not in made:
            where = tmp_path_factory.mktemp("corpus")
            (where / "gunicorn.conf.py").write_text(key)
            calls = where / "calls"
            made[key] = (Gunicorn("robustness.robust_apps:echo", "--keep-alive", "30",
                                  config=str(where / "gunicorn.conf.py"),
                                  env={"ROBUST_CALLS": str(calls)}), calls)
        server, calls = made[key]
        calls.write_text("")
        return server, calls

    yield get
    for server, _calls in made.values():
        server.stop()
        assert "Traceback" not in server.log(), server.log()
        check_log(server)


def missing_host(request: dict) -> bool:
    return request["version"] == (1, 1) and not any(n == "HOST" for n, _ in request["headers"])


def with_host(case: corpus.Case) -> corpus.Case:
    """The case with a Host field added to each HTTP/1.1 request that has none."""
    data, at = case.data, 0
    for request in case.expect:
        line = f"{request['method']} {request['uri']['raw']} HTTP/1.1\r\n".encode("latin-1")
        if not missing_host(request):
            continue
        found = data.index(line, at) + len(line)
        data, at = data[:found] + ADDED_HOST + data[found:], found + len(ADDED_HOST)
    return replace(case, data=data)


def same_environ(ours: dict, theirs: dict) -> None:
    """Our environ against gunicorn's: equal but for the differences DEVIATIONS.md lists."""
    ours, theirs = dict(ours), dict(theirs)
    assert ours.pop("SERVER_SOFTWARE").startswith("gunicorn")
    theirs.pop("SERVER_SOFTWARE")
    assert ours.pop("wsgi.input_terminated") is True
    if "chunked" in theirs.get("HTTP_TRANSFER_ENCODING", "").lower() and "CONTENT_LENGTH" not in theirs:
        assert ours.pop("CONTENT_LENGTH") == str(len(theirs["body"].encode("latin-1")))
    assert ours == theirs


def check_served(case: corpus.Case, responses: list, client, server: Gunicorn, count: int,
                 data: bytes | None = None) -> None:
    expected = corpus.gunicorn_environs(case, client, (server.host, server.port), data)
    for index in range(count):
        status, _headers, body = responses[index]
        assert status == 200, (index, body)
        theirs = dict(expected[index])
        if index and "PROXY_PROTOCOL" in expected[0]:
            # gunicorn applies a PROXY preamble to the first request only; it describes the
            # connection, so here every request on it keeps the proxied addresses.
            theirs.update({k: expected[0][k] for k in PROXY_KEYS})
        same_environ(json.loads(body), theirs)


def refusals(server: Gunicorn, text: str) -> int:
    return server.log().count(text)


def check_against_reference(case: corpus.Case, sender: str, servers, data: bytes) -> None:
    """`data` is answered, and reaches the app, as the reference treats the same bytes with the
    settings the installed gunicorn gives the worker (for corpus.Case.adapted cases)."""
    served, exc = corpus.gunicorn_refuses(case, data)
    status = corpus.gunicorn_status(exc, case.run_cfg)
    server, calls = servers(case)
    responses, client = replay(server, data, sender)
    assert [r[0] for r in responses] == [200] * served + ([status] if status else []), responses
    assert len(calls.read_text().splitlines()) == served
    check_served(case, responses, client, server, served, data)


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("case", INVALID, ids=[c.name for c in INVALID])
def test_invalid_request_is_refused(case, sender, servers):
    if case.adapted:
        check_against_reference(case, sender, servers, corpus.add_host(case.data))
        return
    _served, exc = corpus.gunicorn_refuses(case)
    assert isinstance(exc, case.expect), (case.name, exc)  # the corpus means what we think
    server, calls = servers(case)
    responses, _client = replay(server, case.data, sender)
    statuses = [r[0] for r in responses]
    if case.name in INVALID_SERVED:
        assert statuses == [200]
        assert calls.read_text().splitlines() == [INVALID_SERVED[case.name]]
        if "trailer" in case.name:  # the trailer section is discarded: Host stays the head's
            assert json.loads(responses[0][2])["HTTP_HOST"] == "example.com"
        return
    status = INVALID_OTHER_STATUS.get(case.name, corpus.gunicorn_status(exc, case.run_cfg))
    assert statuses == ([status] if status else []), (case.name, responses)
    for _status, headers, _body in responses:
        assert headers["connection"] == "close"
    assert calls.read_text() == "", "an invalid request reached the app"


# Invalid HTTP/1.1 cases without Host (the worker refuses the missing Host before anything else).
HOSTLESS = [c for c in INVALID if corpus.add_host(c.data) != c.data and not c.adapted
            and c.name not in INVALID_SERVED]


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("case", HOSTLESS, ids=[c.name for c in HOSTLESS])
def test_invalid_request_with_host_added_is_refused_for_its_own_fault(case, sender, servers):
    data = corpus.add_host(case.data)
    _served, exc = corpus.gunicorn_refuses(case, data)
    assert isinstance(exc, case.expect), (case.name, exc)  # still invalid, for the same fault
    server, calls = servers(case)
    missing_host = refusals(server, MISSING_HOST)
    responses, _client = replay(server, data, sender)
    status = INVALID_OTHER_STATUS.get(case.name, corpus.gunicorn_status(exc, case.run_cfg))
    assert [r[0] for r in responses] == ([status] if status else []), (case.name, responses)
    assert calls.read_text() == "", "an invalid request reached the app"
    assert refusals(server, MISSING_HOST) == missing_host, "refused for the Host, not its fault"


def refused_once(server: Gunicorn, statuses: list, calls: Path, before: dict, served: int = 0) -> str:
    """The last status is a 400 whose reason the log gained; `served` requests came first."""
    assert statuses == [200] * served + [400], statuses
    assert len(calls.read_text().splitlines()) == served
    gained = [text for text, count in before.items() if refusals(server, text) > count]
    assert len(gained) == 1, (gained, server.log()[-2000:])
    return gained[0]


def reasons(server: Gunicorn, case: corpus.Case) -> dict[str, int]:
    texts = {MISSING_HOST, VALID_REFUSED.get(case.name, MISSING_HOST)}
    return {text: refusals(server, text) for text in texts}


def check_all_served(case, server, calls, sender) -> None:
    """Every request of `case` reaches the app once, as gunicorn would build it."""
    calls.write_text("")
    before = reasons(server, case)
    responses, client = replay(server, case.data, sender)
    statuses = [r[0] for r in responses]
    if case.name in VALID_REFUSED:
        assert refused_once(server, statuses, calls, before) == VALID_REFUSED[case.name]
        return
    assert statuses == [200] * len(case.expect), statuses
    assert len(calls.read_text().splitlines()) == len(case.expect)
    check_served(case, responses, client, server, len(case.expect))


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("case", VALID, ids=[c.name for c in VALID])
def test_valid_request_reaches_app_as_gunicorn_builds_it(case, sender, servers):
    if case.adapted:
        check_against_reference(case, sender, servers, corpus.add_host(case.data))
        return
    server, calls = servers(case)
    unsupported = [name for name in UNSUPPORTED if case.settings.get(name)]
    if unsupported:  # said at startup, refused per request
        assert f"{unsupported[0]} is set but not supported" in server.log()
        responses, _client = replay(server, case.data, sender)
        assert [r[0] for r in responses] == [400] and calls.read_text() == ""
        return
    first_missing = next((i for i, r in enumerate(case.expect) if missing_host(r)), None)
    if first_missing is None:
        check_all_served(case, server, calls, sender)
        return
    # RFC 9112 section 3.2: 400 for an HTTP/1.1 request without Host; those before it are served
    # (unless the parser refuses the case for one of the reasons in VALID_REFUSED first).
    before = reasons(server, case)
    responses, client = replay(server, case.data, sender)
    statuses = [r[0] for r in responses]
    if statuses[:1] == [400]:
        assert refused_once(server, statuses, calls, before) in before
    else:
        assert refused_once(server, statuses, calls, before, first_missing) == MISSING_HOST
        check_served(case, responses, client, server, first_missing)
    check_all_served(with_host(case), server, calls, sender)


def test_every_deviation_is_documented():
    text = DEVIATIONS_MD.read_text()
    listed = set(re.findall(r"`((?:valid|invalid)/[\w.]+)`", text))
    missing_host_cases = {f"valid/{c.name}" for c in VALID
                          if any(missing_host(r) for r in c.expect)
                          and not any(c.settings.get(n) for n in UNSUPPORTED)}
    unsupported = {f"valid/{c.name}" for c in VALID if any(c.settings.get(n) for n in UNSUPPORTED)}
    expected = ({f"invalid/{n}" for n in INVALID_SERVED} | {f"invalid/{n}" for n in INVALID_OTHER_STATUS}
                | {f"valid/{n}" for n in VALID_REFUSED} | missing_host_cases | unsupported)
    # Equality: a stale entry (a case that no longer deviates) fails as a missing one does.
    assert listed == expected, (sorted(expected - listed), sorted(listed - expected))
    assert len(VALID) >= 60 and len(INVALID) >= 80  # the whole corpus was found
