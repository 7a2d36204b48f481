"""The only place threads cross: the app thread pool, the spool writer and one-off calls (pool),
the channels between the loop and app threads (channels). Other modules import these names from
here."""

from .channels import PIECE_COST, BodyFeed, Channel, Gated, Inbox
from .pool import SpoolWriter, ThreadPool, call_in_thread

__all__ = ["PIECE_COST", "BodyFeed", "Channel", "Gated", "Inbox", "SpoolWriter", "ThreadPool",
           "call_in_thread"]
