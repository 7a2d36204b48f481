"""The only place threads cross: the app thread pool and the spool writer (pool), the channels
between the loop and app threads (channels). Other modules import these names from here."""

from .channels import PIECE_COST, BodyFeed, Channel, Gated, Inbox
from .pool import SpoolWriter, ThreadPool

__all__ = ["PIECE_COST", "BodyFeed", "Channel", "Gated", "Inbox", "SpoolWriter", "ThreadPool"]
