"""Each recorded flow decided under the candidate and compared, as it goes, with its "before": the
recorded decision, or the baseline config's (decided in a process of its own).

The baseline's process is forked once the flows are read (they are not copied) and sends its
outcomes back in batches while the candidate decides: the two configs share nothing, and a
machine's second core halves the time. Only the flows whose decision changed are kept whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection

from .forked import forked, received
from .offline import OfflineGateway
from .outcome import Outcome
from .recorded import Recorded
from .report import Progress, Replayed

BASELINE = "the baseline's replay"
BATCH = 256
"""Baseline outcomes sent to the candidate's side at a time (the last batch is shorter)."""


def replay(
    flows: list[Recorded], candidate: OfflineGateway, baseline: OfflineGateway | None, progress: Progress
) -> list[Replayed]:
    """Each flow decided under the candidate (and the baseline), in recorded order."""
    if baseline is None:
        return asyncio.run(_compare(flows, candidate, (r.outcome() for r in flows), progress))
    with forked(lambda to_parent: _baseline(flows, baseline, to_parent), BASELINE) as from_child:
        return asyncio.run(_compare(flows, candidate, _received(from_child), progress))


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


def _baseline(flows: list[Recorded], baseline: OfflineGateway, to_parent: Connection) -> None:
    async def decide_all() -> None:
        batch = []
        for recorded in flows:
            batch.append((await baseline.decide(recorded))[1])
            if len(batch) == BATCH:
                to_parent.send(batch)
                batch = []
        to_parent.send(batch)

    asyncio.run(decide_all())


def _received(from_child: Connection) -> Iterator[Outcome]:
    while True:
        batch: list[Outcome] = received(from_child, BASELINE)  # type: ignore[assignment]
        yield from batch
        if len(batch) < BATCH:
            return
