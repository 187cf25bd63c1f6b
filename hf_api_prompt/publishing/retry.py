"""Retrying Hub calls on transient errors (429, 5xx, dropped connections), and only on those."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, List, Optional, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


def _transport_errors() -> tuple:
    """Connection-level exception classes of the HTTP clients huggingface_hub may use."""
    classes: List[type] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                classes.append(cls)
    return tuple(classes)


def status_of(error: BaseException) -> Optional[int]:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_transient(error: BaseException) -> bool:
    """Whether retrying the same request may succeed: 408/429/5xx answers and dropped connections."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        return status_of(error) in TRANSIENT_STATUS
    return isinstance(error, _transport_errors())


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retry a step on transient errors: ``attempts`` tries, waits ``base_wait * 2**n`` capped at ``max_wait``.

    Example:
        >>> calls = []
        >>> def flaky():
        ...     calls.append(1)
        ...     if len(calls) < 3:
        ...         raise ConnectionError("dropped")
        ...     return "done"
        >>> RetryPolicy(attempts=3, base_wait=0).call("example", flaky), len(calls)
        ('done', 3)
    """

    attempts: int = 4
    base_wait: float = 2.0
    max_wait: float = 30.0

    def call(self, what: str, step: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return step()
            except Exception as error:  # noqa: BLE001 (re-raised unless transient)
                if attempt == self.attempts or not is_transient(error):
                    raise
                wait = min(self.max_wait, self.base_wait * 2 ** (attempt - 1))
                logger.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(error).__name__, error,
                               attempt, self.attempts - 1, wait)
                sleep(wait)
        raise AssertionError("unreachable")
