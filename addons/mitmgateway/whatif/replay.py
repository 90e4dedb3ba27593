"""Each recorded flow decided under the candidate and compared, as it goes, with its "before": the
recorded decision, or the baseline config's.

The befores are worked out in a process of their own, forked once the flows are read (they are not
copied), and sent back in batches while the candidate decides: the baseline config's decisions,
or the recorded ones (read from the recorded request and response, whose parsing costs as much as
a decision). The two sides share nothing, and a machine's second core halves the time. Only the
flows whose decision changed are kept whole.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection

from .flowfile import UnreadablePart
from .forked import forked, received
from .offline import OfflineGateway
from .outcome import Outcome
from .recorded import Recorded
from .report import Progress, Replayed

BASELINE = "the baseline's replay"
RECORDED = "the process reading the recorded decisions"
BATCH = 256
"""Baseline outcomes sent to the candidate's side at a time (the last batch is shorter)."""


def replay(
    flows: list[Recorded], candidate: OfflineGateway, baseline: OfflineGateway | None, progress: Progress
) -> list[Replayed]:
    """Each flow decided under the candidate (and the baseline), in recorded order."""
    if baseline is None and (os.cpu_count() or 1) < 2:
        return asyncio.run(_compare(flows, candidate, (r.outcome() for r in flows), progress))
    what = RECORDED if baseline is None else BASELINE
    with forked(lambda to_parent: _befores(flows, baseline, to_parent), what) as from_child:
        return asyncio.run(_compare(flows, candidate, _received(from_child, what), progress))


async def _compare(
    flows: list[Recorded], candidate: OfflineGateway, befores: Iterable[Outcome], progress: Progress
) -> list[Replayed]:
    replayed = []
    for done, (recorded, before) in enumerate(zip(flows, befores, strict=True), 1):
        flow, after = await candidate.decide(recorded)
        entry = Replayed(recorded, before, after, flow)
        if not entry.changes and entry.indeterminate is None:
            entry = Replayed(recorded, before, after, None)
        replayed.append(entry)
        progress.advance(done)
    progress.end()
    return replayed


def _befores(flows: list[Recorded], baseline: OfflineGateway | None, to_parent: Connection) -> None:
    """In the forked process: each flow's before, sent in batches; a recorded part found
    malformed is sent instead (the parent reports it by file and byte)."""

    async def decide_all() -> None:
        batch = []
        for recorded in flows:
            batch.append((await baseline.decide(recorded))[1] if baseline else recorded.outcome())
            if len(batch) == BATCH:
                to_parent.send(batch)
                batch = []
        to_parent.send(batch)

    try:
        asyncio.run(decide_all())
    except UnreadablePart as e:
        to_parent.send(e)


def _received(from_child: Connection, what: str) -> Iterator[Outcome]:
    while True:
        batch: list[Outcome] | UnreadablePart = received(from_child, what)  # type: ignore[assignment]
        if isinstance(batch, UnreadablePart):
            raise batch
        yield from batch
        if len(batch) < BATCH:
            return
