"""What the gateway process holds once it serves: its startup heap kept out of the cyclic garbage
collector's way, and small per-connection queues.

mitmproxy keeps each finished flow in a reference cycle of its own (an HTTP stream holds its own
bound handler), so every request leaves some sixty objects (flow, messages, stream, buffers) for
the cyclic collector. That is cheap in its young generations, but each full collection also walks
everything the process made before serving (mitmproxy's modules, the config, the certificates):
50-60 ms with the event loop stopped, a few times a minute under load, which was one lean worker's
p99 latency. `gc.freeze()` once serving starts moves all of that to a generation no collection
walks; what comes later (a reloaded config, flows) is collected as before.

Each idle client connection costs what its objects hold; the largest single share was its layers'
empty event queues (mitm/event_queues.py), made lists while the gateway is loaded.
"""

from __future__ import annotations

import gc

from ..mitm.event_queues import SmallEventQueues


class StartupHeap:
    def __init__(self) -> None:
        self._event_queues = SmallEventQueues()

    def running(self) -> None:
        self._event_queues.install()
        gc.collect()  # what startup left as garbage is freed, not frozen
        gc.freeze()

    def done(self) -> None:
        self._event_queues.uninstall()
