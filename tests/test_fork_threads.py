"""Torch's thread count in forked processes: one thread in ``datasets``' ``num_proc`` workers only.

GNU OpenMP (torch's CPU thread pool) hangs in a forked child whose parent already
ran parallel regions, so the prompter uses one intra-op thread in the workers
that ``datasets`` forks for ``num_proc``. Any other child that the user's program
forks (``os.fork``, ``multiprocessing``'s ``fork`` context) must keep the thread
count it inherited: that is the user's setting, not ours to change.
"""

import multiprocessing
import os
import select

import pytest
import torch
from PIL import Image

from hf_api_prompt import ImagePrompter, prompter as prompter_module

PARENT_THREADS = 2


@pytest.fixture
def two_threads():
    """The parent runs two intra-op threads (restored afterwards), so a drop to one is visible on any machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(PARENT_THREADS)
    yield
    torch.set_num_threads(before)


class _Recorder:
    """Stands in for the backend class in the child: records the thread count when the model would load.

    The child then runs no torch kernel at all, so the test cannot itself hit the
    OpenMP hang that the one-thread rule exists for.
    """

    def __init__(self, config, device):
        self.threads = torch.get_num_threads()


def _threads_after_loading_in_child(prompter, monkeypatch) -> int:
    monkeypatch.setattr(prompter_module, "get_backend", lambda name: _Recorder)
    return prompter.backend().threads


def _used_prompter(tiny_clip):
    """Run a prompter in this process (torch's parallel regions included); return a fresh, unloaded one."""
    used = ImagePrompter("clip", model=tiny_clip, layer_index=1)
    used({"image": [Image.new("RGB", (40, 30), (200, 30, 30))], "question": ["Where is it?"]})
    return ImagePrompter("clip", model=tiny_clip, layer_index=1)


def test_user_os_fork_keeps_parent_thread_count(tiny_clip, two_threads, monkeypatch):
    fresh = _used_prompter(tiny_clip)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        code = 0
        try:
            os.write(write_end, str(_threads_after_loading_in_child(fresh, monkeypatch)).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 60)
        report = os.read(read_end, 64).decode() if ready else ""
    finally:
        os.close(read_end)
        if not report:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    assert report, f"the forked child reported nothing (wait status {status})"
    assert int(report) == PARENT_THREADS, "a child the user forked had its torch thread count changed"
    assert torch.get_num_threads() == PARENT_THREADS


def _child_entry(fresh, queue):
    with pytest.MonkeyPatch.context() as monkeypatch:
        queue.put(_threads_after_loading_in_child(fresh, monkeypatch))


def test_user_multiprocessing_fork_keeps_parent_thread_count(tiny_clip, two_threads):
    fresh = _used_prompter(tiny_clip)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_entry, args=(fresh, queue))
    child.start()
    try:
        threads = queue.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert threads == PARENT_THREADS, "a child the user forked had its torch thread count changed"


def test_num_proc_workers_use_one_thread_and_the_parent_keeps_its_own(tiny_clip, two_threads, backend_loads):
    from test_datasets_integration import hang_guard, make_dataset

    ds = make_dataset(rows=4)
    ImagePrompter("clip", model=tiny_clip, layer_index=1).map(ds, batch_size=2)  # parallel regions in the parent
    with hang_guard():
        ImagePrompter("clip", model=tiny_clip, layer_index=1).map(ds, batch_size=2, num_proc=2)
    records = backend_loads()
    assert records[0] == (os.getpid(), PARENT_THREADS)
    workers = records[1:]
    assert len(workers) == 2 and os.getpid() not in {pid for pid, _ in workers}
    assert all(threads == 1 for _, threads in workers), workers
    assert torch.get_num_threads() == PARENT_THREADS
