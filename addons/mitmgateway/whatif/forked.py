"""Work for a forked process: the replay's second core (the baseline's decisions, half of a large
flow file's parsing). The child inherits what the parent has read without a copy and sends its
results back through a pipe."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection


class ForkFailed(Exception):
    """The forked process failed (it says why on standard error)."""


@contextmanager
def forked(work: Callable[[Connection], None], what: str) -> Iterator[Connection]:
    """Run ``work(to_parent)`` in a forked process; the block gets the parent's end of the pipe.

    Leaving the block closes that end (which ends a child still sending: the parent's side
    failed), joins the child (killed if it lingers) and raises ForkFailed if it failed."""
    context = multiprocessing.get_context("fork")
    from_child, to_parent = context.Pipe(duplex=False)

    def run() -> None:
        from_child.close()  # with the parent's end closed here too, the parent's close ends a send
        work(to_parent)
        to_parent.close()

    child = context.Process(target=run, daemon=True)
    child.start()
    to_parent.close()
    try:
        yield from_child
    finally:
        from_child.close()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()
    if child.exitcode != 0:
        raise ForkFailed(f"{what} failed (exit status {child.exitcode})")


def received(from_child: Connection, what: str) -> object:
    """The next thing the child sent (ForkFailed if it ended first)."""
    try:
        return from_child.recv()
    except EOFError:
        raise ForkFailed(f"{what} ended before it sent all") from None
