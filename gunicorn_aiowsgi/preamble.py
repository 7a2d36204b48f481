"""A connection's PROXY protocol preamble: read before any request byte, judged against proxy_allow_ips."""

from __future__ import annotations

from typing import Any, Callable

from . import proxy_protocol
from .boundary import IDLE
from .context import Context
from .environ import is_trusted, proxied_peer
from .errors import BadRequest, Forbidden


class Preamble:
    """The Connection's PROXY preamble methods (a mixin, as timeouts.Timeouts: the connection
    holds the state they read)."""

    __slots__ = ()
    ctx: Context
    peer: Any
    proxy: Any  # proxy_protocol.ProxyParser until the preamble is read, then None
    state: Any  # ConnState
    refuse: Callable[..., None]
    _arm: Callable[[], None]

    def _preamble(self, data: bytes) -> bytes:
        """Consume a PROXY protocol preamble before any request byte is parsed."""
        assert self.proxy is not None and self.peer is not None
        try:
            result = self.proxy.feed(data)
        except proxy_protocol.ProxyProtocolError as exc:
            # A peer not allowed to send one hears 403 whatever its preamble holds, as under
            # gunicorn, and what it sent is not echoed to the log.
            error = Forbidden("Request forbidden") if self._untrusted_preamble() else \
                BadRequest(f"Invalid PROXY line: {exc}")
            self.refuse(error)
            return b""
        # Judged as soon as the signature is recognised (the parser's `version`), as gunicorn
        # does: a v2 header may announce 64 KiB, which an untrusted peer must not make us hold
        # until header_timeout.
        if self._untrusted_preamble():
            self.refuse(Forbidden("Request forbidden"))
            return b""
        if result is None:
            return b""
        self.proxy = None
        info, rest = result
        if info is not None:
            self.peer = proxied_peer(self.peer, info)
        self.state = IDLE  # the first head's time still counts from the connection's start (_open)
        self._arm()
        return rest

    def _untrusted_preamble(self) -> bool:
        """A PROXY signature came from a TCP peer outside proxy_allow_ips."""
        settings, peer = self.ctx.settings, self.peer
        assert self.proxy is not None and peer is not None
        return (self.proxy.version is not None and peer.remote_port is not None
                and not is_trusted(peer.remote_addr, settings.proxy_allow_ips,
                                   settings.proxy_networks))
