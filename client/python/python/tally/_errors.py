"""The exceptions of the Tally client: one class per error code.

The server's codes are SPEC's (``no_seat`` is :class:`NoSeat`); the client's own failures
have codes of their own (``unreachable`` is :class:`Unreachable`). Every exception is a
:class:`Error` with ``code`` (the stable string) and ``message`` (a sentence a person can act
on).
"""

from __future__ import annotations

from typing import Dict, Optional, Type


class Error(Exception):
    """A failure of the Tally client or a refusal of the server."""

    #: The stable code, as ``tally --json`` prints it.
    code: str = "error"

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        #: The sentence saying what went wrong.
        self.message = message
        if code is not None:
            self.code = code


# The server's refusals (SPEC §4).
class Unauthenticated(Error):
    """The token is not valid (unknown, revoked, or its account is not active)."""

    code = "unauthenticated"


class Forbidden(Error):
    """The user's role does not allow the request."""

    code = "forbidden"


class NotFound(Error):
    """What the request names does not exist."""

    code = "not_found"


class AlreadyExists(Error):
    code = "already_exists"


class Invalid(Error):
    """The request is malformed or its values are out of range."""

    code = "invalid"


class NoSeat(Error):
    """No seat of the feature is free for this user now."""

    code = "no_seat"


class UserLimit(Error):
    code = "user_limit"


class Borrowed(Error):
    code = "borrowed"


class HasAssignments(Error):
    code = "has_assignments"


class NotBorrowable(Error):
    """No borrowable entitlement of the feature has a seat to lend."""

    code = "not_borrowable"


class Expired(Error):
    code = "expired"


class TrialLocked(Error):
    code = "trial_locked"


class SelfOrOwner(Error):
    code = "self_or_owner"


class QueueTimeout(Error):
    code = "queue_timeout"


class NotLeader(Error):
    """Only standbys of a cluster answered, and no leader served the request in time."""

    code = "not_leader"


class VersionUnsupported(Error):
    code = "version_unsupported"


class RateLimited(Error):
    code = "rate_limited"


class Denied(Error):
    """A policy rule refuses the request."""

    code = "denied"


class NoCredit(Error):
    code = "no_credit"


class Internal(Error):
    """The server failed; nothing was changed."""

    code = "internal"


# The client's own failures.
class Unreachable(Error):
    """No server of the list could be reached."""

    code = "unreachable"


class Untrusted(Error):
    """No server's certificate verifies against the configured CA."""

    code = "untrusted"


class ConnectionLost(Error):
    """The connection dropped while a request was in flight; it may have been applied."""

    code = "connection_lost"


class Timeout(Error):
    """The server did not answer within the request's deadline."""

    code = "timeout"


class ConfigError(Invalid):
    """The client file is missing, unreadable or incomplete (code ``invalid``, as ``tally``)."""


class ProtocolError(Error):
    """The server said something this client cannot understand."""

    code = "protocol"


class Closed(Error):
    """The client was closed."""

    code = "closed"


class LeaseLost(Error):
    """Raised by :meth:`tally.Lease.check` once the server ended the lease."""

    code = "lease_lost"


_BY_CODE: Dict[str, Type[Error]] = {
    cls.code: cls
    for cls in (
        Unauthenticated, Forbidden, NotFound, AlreadyExists, Invalid, NoSeat, UserLimit,
        Borrowed, HasAssignments, NotBorrowable, Expired, TrialLocked, SelfOrOwner,
        QueueTimeout, NotLeader, VersionUnsupported, RateLimited, Denied, NoCredit, Internal,
        Unreachable, Untrusted, ConnectionLost, Timeout, ProtocolError, Closed, LeaseLost,
    )
}

# Shown as tally.NoSeat, the name applications use, in tracebacks and reprs.
for _cls in (Error, ConfigError, *_BY_CODE.values()):
    _cls.__module__ = "tally"
del _cls


def _make(code: str, message: str, class_name: Optional[str] = None) -> Error:
    """The exception for ``code`` (or of the class named ``class_name``); the extension
    module calls this to raise."""
    cls = globals().get(class_name, None) if class_name else _BY_CODE.get(code)
    if not (isinstance(cls, type) and issubclass(cls, Error)):
        cls = Error
    return cls(message, code)
