"""Tally's Python client: check a license seat out of a Tally server and hold it.

    import tally

    with tally.checkout("vray") as lease:
        render()            # the seat is heartbeated on the client's own thread
        lease.check()       # raises tally.LeaseLost if an admin released it, say

Without a ``config`` path, the client file is the one ``TALLY_CONFIG`` names, else
``~/.config/tally/client.toml``, as for the ``tally`` command. Refusals and failures raise a
subclass of :class:`tally.Error` named after the error's code (``no_seat`` is
:class:`tally.NoSeat`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import List, Optional, Union

from ._errors import (
    AlreadyExists,
    Borrowed,
    Closed,
    ConfigError,
    ConnectionLost,
    Denied,
    Error,
    Expired,
    Forbidden,
    HasAssignments,
    Internal,
    Invalid,
    LeaseLost,
    NoCredit,
    NoSeat,
    NotBorrowable,
    NotFound,
    NotLeader,
    ProtocolError,
    QueueTimeout,
    RateLimited,
    SelfOrOwner,
    Timeout,
    TrialLocked,
    Unauthenticated,
    Unreachable,
    Untrusted,
    UserLimit,
    VersionUnsupported,
)
from ._tally import Borrow, Client, FeatureStatus, Lease, Verdict, __version__, verify_offline

#: A client file: a path, or ``None`` for the one the environment names.
ConfigPath = Union[str, "os.PathLike[str]", None]
#: Seconds, a ``timedelta``, or text such as ``"7d"``, ``"8h"`` or ``"90m"``.
DurationLike = Union[int, float, timedelta, str]


def checkout(
    feature: str,
    seats: int = 1,
    config: ConfigPath = None,
    wait: Optional[DurationLike] = None,
) -> Lease:
    """Checks out ``seats`` seats of ``feature`` over a connection of their own.

    Use it in a ``with`` block, which releases the lease at its end; or call
    ``lease.release()``. The connection lasts as long as the lease. With ``wait``, a
    checkout that finds no free seat waits in the feature's queue on the server until a
    seat is granted or the wait has passed, then raises ``tally.NoSeat``.
    """
    with Client(config) as client:
        return client.checkout(feature, seats, wait)


def status(feature: Optional[str] = None, config: ConfigPath = None) -> List[FeatureStatus]:
    """The figures of ``feature``, or of every feature, as ``tally status`` shows them."""
    with Client(config) as client:
        return client.status(feature)


def borrow(
    feature: str, duration: DurationLike, seats: int = 1, config: ConfigPath = None
) -> Borrow:
    """Borrows seats for offline use on this machine (like ``tally borrow F --for D``)."""
    with Client(config) as client:
        return client.borrow(feature, duration, seats)


def return_borrow(feature: str, config: ConfigPath = None) -> int:
    """Gives back this machine's borrows of ``feature``; returns the seats returned."""
    with Client(config) as client:
        return client.return_borrow(feature)


def verify(feature: str, config: ConfigPath = None) -> Verdict:
    """Whether this machine holds a valid borrow of ``feature``, checked with no network.

    ``config`` gives the CA the borrow's token must lead to. ``Client.verify`` also asks
    the server.
    """
    return verify_offline(feature, None if config is None else os.fspath(config))


__all__ = [
    "AlreadyExists",
    "Borrow",
    "Borrowed",
    "Client",
    "Closed",
    "ConfigError",
    "ConfigPath",
    "ConnectionLost",
    "Denied",
    "DurationLike",
    "Error",
    "Expired",
    "FeatureStatus",
    "Forbidden",
    "HasAssignments",
    "Internal",
    "Invalid",
    "Lease",
    "LeaseLost",
    "NoCredit",
    "NoSeat",
    "NotBorrowable",
    "NotFound",
    "NotLeader",
    "ProtocolError",
    "QueueTimeout",
    "RateLimited",
    "SelfOrOwner",
    "Timeout",
    "TrialLocked",
    "Unauthenticated",
    "Unreachable",
    "Untrusted",
    "UserLimit",
    "Verdict",
    "VersionUnsupported",
    "__version__",
    "borrow",
    "checkout",
    "return_borrow",
    "status",
    "verify",
]
