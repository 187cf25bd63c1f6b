"""The image work of a batch on a pool of threads, sized so that processes and threads never oversubscribe the cores.

Decoding, resizing, blending and encoding spend their time in Pillow and numpy
code that releases the GIL, so threads scale with the cores. The pool size
defaults to ``$HF_API_PROMPT_THREADS`` when set, else to the cores this process
may run on (its CPU affinity) divided by the processes sharing them: ``datasets`` ``num_proc`` workers (:func:`workers`, set by
``ImagePrompter.map``) times the processes of one machine under accelerate or
torchrun (``LOCAL_WORLD_SIZE``). A worker that ``datasets`` forked without that
share being known (``ds.map(prompter, num_proc=N)`` called directly) uses 1 thread,
as torch does there. The model step runs between the pool's phases, not
beside them, so torch's threads and the pool's never compete.

Example:
    >>> thread_map(lambda x: x * x, [1, 2, 3], threads=2)
    [1, 4, 9]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Set (by :func:`workers`) in the environment that ``datasets`` worker processes inherit.
WORKERS_ENV = "HF_API_PROMPT_WORKERS"
#: Threads per process, when set (``hf-api-prompt --num-threads``): wins over the share of the cores.
THREADS_ENV = "HF_API_PROMPT_THREADS"
#: The prompt device of every prompter and remask that has none of its own (``hf-api-prompt --prompt-device``).
PROMPT_DEVICE_ENV = "HF_API_PROMPT_PROMPT_DEVICE"
_POOLS: Dict[Tuple[int, int], concurrent.futures.ThreadPoolExecutor] = {}


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _count(name: str) -> int:
    try:
        return max(1, int(os.environ.get(name, "1")))
    except ValueError:
        return 1


def default_threads() -> int:
    """The pool size when none is given: ``$HF_API_PROMPT_THREADS``, else ``available_cores() // processes`` (at least 1)."""
    if os.environ.get(THREADS_ENV):
        return _count(THREADS_ENV)
    if not os.environ.get(WORKERS_ENV) and forked_datasets_worker():
        return 1
    return max(1, available_cores() // (_count(WORKERS_ENV) * _count("LOCAL_WORLD_SIZE")))


def forked_datasets_worker() -> bool:
    """Whether this process is a ``num_proc`` worker that ``datasets`` forked.

    ``datasets`` forks its workers with the ``multiprocess`` package, so only a process
    that ``multiprocess`` forked (a ``ForkProcess``) counts; any other child of the
    user's program (``os.fork``, the standard ``multiprocessing``) and spawned workers do not.
    """
    multiprocess = sys.modules.get("multiprocess")  # imported by datasets; never imported here
    return multiprocess is not None and isinstance(multiprocess.current_process(), multiprocess.context.ForkProcess)


def workers(count: Optional[int]):
    """Context manager: processes started within it count ``count`` per machine (``datasets`` ``num_proc``)."""
    return environment(WORKERS_ENV, count if count and count > 1 else None)


def threads_per_process(count: Optional[int]):
    """Context manager: every pool of this process and of those started within it has ``count`` threads."""
    return environment(THREADS_ENV, count)


def default_prompt_device() -> Optional[str]:
    """``$HF_API_PROMPT_PROMPT_DEVICE``, or ``None`` (stage 3 on the CPU with Pillow and numpy)."""
    return os.environ.get(PROMPT_DEVICE_ENV) or None


@contextlib.contextmanager
def environment(name: str, value: Optional[object]) -> Iterator[None]:
    """``$name = value`` within the block (inherited by the processes started there), restored after."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = str(value)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def thread_map(function: Callable[[T], R], items: Sequence[T], threads: Optional[int] = None) -> List[R]:
    """``[function(x) for x in items]`` on ``threads`` threads (default :func:`default_threads`), in order.

    The first exception, in the items' order, is raised once every item is done. A pool
    belongs to the process that made it (a forked child makes its own).
    """
    threads = default_threads() if threads is None else threads
    if threads <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    key = (os.getpid(), threads)
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="hf_api_prompt")
    futures = [pool.submit(function, item) for item in items]
    concurrent.futures.wait(futures)
    return [future.result() for future in futures]
