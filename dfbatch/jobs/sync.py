"""Run the async engine from synchronous code: scripts, and Jupyter's running event loop.

Default: a dedicated event loop in a worker thread. It never touches the caller's loop, so it
works the same in a script, in Jupyter or IPython (whose loop is already running) and in
Colab; and a KeyboardInterrupt (the notebook's stop button) arrives in the waiting main thread,
which cancels the run in the worker, waits for every request to be cancelled and the
connections closed, then re-raises: nothing keeps running in the kernel afterwards.

``DFBATCH_RUNNER=nest_asyncio`` instead re-enters the running loop with nest_asyncio (patching
it on first use, only then). It is kept for environments without threads; an interrupt there
can land inside the loop's own machinery, which is why it is not the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

T = TypeVar("T")
S = TypeVar("S")
P = ParamSpec("P")

#: Seconds to wait for a cancelled run to wind down after an interrupt.
CANCEL_GRACE = 10.0


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine that ``make()`` returns to completion and return its result."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if in_loop and os.environ.get("DFBATCH_RUNNER") == "nest_asyncio":
        return _run_nested(make)
    return _run_in_thread(make)


def _run_in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = asyncio.new_event_loop()
    result: dict[str, Any] = {}
    task_ready = threading.Event()
    finished = threading.Event()
    holder: dict[str, asyncio.Task[T]] = {}

    def worker() -> None:
        asyncio.set_event_loop(loop)
        try:
            task = loop.create_task(make())
            holder["task"] = task
            task_ready.set()
            result["value"] = loop.run_until_complete(task)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc
        finally:
            task_ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                finished.set()

    thread = threading.Thread(target=worker, name="dfbatch-run", daemon=True)
    thread.start()
    try:
        while not finished.wait(0.1):  # short waits keep Ctrl-C responsive
            pass
    except KeyboardInterrupt:
        task_ready.wait(CANCEL_GRACE)
        task = holder.get("task")
        if task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        finished.wait(CANCEL_GRACE)
        raise
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _run_nested(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    import nest_asyncio

    loop = asyncio.get_running_loop()
    nest_asyncio.apply(loop)
    task = loop.create_task(make())
    try:
        return loop.run_until_complete(task)
    except KeyboardInterrupt:
        task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(task)
        raise


def blocking_twin(
    async_method: Callable[Concatenate[S, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, P], T]:
    """The synchronous twin of an async method: one signature, stated once on the async one.

    ``embed = blocking_twin(aembed)`` is ``aembed`` run to completion by :func:`run_sync`.
    Type checkers and IDEs read the twin's parameters from the ``ParamSpec``; ``help()`` and
    ``inspect.signature`` read them through ``__wrapped__``.
    """

    @functools.wraps(async_method)
    def method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return run_sync(lambda: async_method(self, *args, **kwargs))

    name = async_method.__name__.removeprefix("a")
    method.__name__ = name
    method.__qualname__ = async_method.__qualname__.rsplit(".", 1)[0] + "." + name
    return method
