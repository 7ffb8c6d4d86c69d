"""Type stubs of the extension module ``tally._tally`` (the classes ``tally`` re-exports)."""

import os
from datetime import datetime, timedelta
from types import TracebackType
from typing import List, Literal, Optional, Type, Union, final

_ConfigPath = Union[str, "os.PathLike[str]", None]
_Duration = Union[int, float, timedelta, str]
_EndReason = Literal["expired", "revoked", "released", "deactivated", "unknown", "moved"]

__version__: str

@final
class Client:
    """A client signed in to a Tally server; a context manager that closes it."""

    def __init__(self, config: _ConfigPath = None, *, agent: Optional[str] = None) -> None:
        """Connects with the client file ``config`` (``None``: ``TALLY_CONFIG``, else
        ``~/.config/tally/client.toml``); ``agent`` names the program to admins."""
    def checkout(
        self, feature: str, seats: int = 1, wait: Optional[_Duration] = None
    ) -> Lease:
        """Checks out seats; raises ``tally.NoSeat`` when none is free (after trying
        again until ``wait`` has passed, when it is given)."""
    def status(self, feature: Optional[str] = None) -> List[FeatureStatus]: ...
    def borrow(self, feature: str, duration: _Duration, seats: int = 1) -> Borrow: ...
    def return_borrow(self, feature: str) -> int: ...
    def verify(self, feature: str) -> Verdict:
        """Checks this machine's borrow of ``feature`` offline, then with the server."""
    @property
    def user(self) -> str: ...
    @property
    def server_id(self) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

@final
class Lease:
    """Seats held, heartbeated on the client's own thread; a context manager that
    releases them."""

    @property
    def id(self) -> str: ...
    @property
    def feature(self) -> str: ...
    @property
    def seats(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def granted_at(self) -> datetime: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def lost(self) -> Optional[_EndReason]:
        """``None`` while held; once the server ended the lease, why."""
    @property
    def released(self) -> bool: ...
    def check(self) -> None:
        """Raises ``tally.LeaseLost`` if the server ended the lease."""
    def wait_lost(self, timeout: Optional[_Duration] = None) -> Optional[_EndReason]:
        """Waits (without the GIL) until the lease is lost or ``timeout`` passes."""
    def release(self) -> None: ...
    def __enter__(self) -> Lease: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

@final
class FeatureStatus:
    """A feature's figures, with the fields of ``tally --json status``."""

    feature: str
    total: int
    assigned: int
    floating: int
    in_use: int
    borrowed: int
    available: int
    queued: int
    def as_dict(self) -> dict[str, Union[str, int]]: ...

@final
class Borrow:
    @property
    def id(self) -> str: ...
    @property
    def feature(self) -> str: ...
    @property
    def seats(self) -> int: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def token_file(self) -> str: ...

@final
class Verdict:
    valid: bool
    reason: str
    checked: Literal["offline", "server"]
    def __bool__(self) -> bool: ...

def verify_offline(feature: str, config: Optional[str] = None) -> Verdict: ...
