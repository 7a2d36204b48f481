"""The one exception family of the worker, each with the HTTP status it should be answered with."""

from __future__ import annotations

import html
from http import HTTPStatus


class HTTPError(Exception):
    """A request that cannot be served; `status` says how to answer it (h11's ProtocolError idea).

    `client_error` tells whether it is the client's fault (logged as a warning with the peer
    address, like gunicorn's handle_error) or ours/the app's (logged with a traceback).
    """

    status = 500
    client_error = False

    def __init__(self, message: str = "", status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"


class BadRequest(HTTPError):
    """RFC 9112 section 2.2: a malformed request is answered 400 and the connection closed."""

    status = 400
    client_error = True


class Forbidden(BadRequest):
    status = 403


class PayloadTooLarge(BadRequest):
    """RFC 9110 section 15.5.14: the body exceeds the configured maximum."""

    status = 413


class IncompleteBody(BadRequest):
    """The client ended its side of the connection before the declared body was complete."""


class URITooLong(BadRequest):
    """RFC 9110 section 15.5.15: gunicorn's limit_request_line."""

    status = 414


class ExpectationFailed(BadRequest):
    """RFC 9110 section 10.1.1: an Expect value other than 100-continue."""

    status = 417


class HeaderFieldsTooLarge(BadRequest):
    """RFC 6585 section 5: gunicorn's limit_request_fields / limit_request_field_size."""

    status = 431


class NotImplementedCoding(BadRequest):
    """RFC 9112 section 6.1: a transfer coding the server does not understand."""

    status = 501


class AppError(HTTPError):
    """The application misbehaved (raised, bad status or header, broke PEP 3333)."""

    status = 500


class GatewayTimeout(HTTPError):
    """AIOWSGI_REQUEST_TIMEOUT passed before the app started its response."""

    status = 504


class Unavailable(HTTPError):
    """RFC 9110 section 15.6.4: load, not a fault; the client may come back after Retry-After
    seconds (section 10.2.3). Logged as a warning without a traceback, and counted (`metric`)."""

    status = 503
    retry_after = "1"
    label = "Unavailable"
    metric = "unavailable_503"


class OutOfFiles(Unavailable):
    """No file descriptor left for a request body's spool file (EMFILE, ENFILE): the worker's
    connections and spool files took them all; they come back as uploads finish."""

    label = "Out of file descriptors"
    metric = "no_fd_503"


class InsufficientStorage(HTTPError):
    """RFC 4918 section 11.5: the request body could not be spooled to disk."""

    status = 507


class ClientDisconnected(ConnectionResetError):
    """The client went away; nothing can be answered. Not an HTTPError on purpose. To the app
    (start_response's write, a streamed body's read) an OSError, as a write to a closed socket
    is under gthread, so an app catching OSError around its writes still does."""


class BodyCutShort(ClientDisconnected):
    """A body the app reads as it arrives ended early (the client left or stalled): to the app an
    OSError, as gunicorn's NoMoreData is an IOError; to the worker, the client's doing."""


def error_page(status: int, reason: str, message: str = "") -> bytes:
    """The body gunicorn's util.write_error sends, so error pages look the same."""
    return (
        "<html>\n  <head>\n    <title>%(reason)s</title>\n  </head>\n  <body>\n"
        "    <h1><p>%(reason)s</p></h1>\n    %(mesg)s\n  </body>\n</html>\n"
        % {"reason": reason, "mesg": html.escape(message)}
    ).encode("latin-1", "replace")
