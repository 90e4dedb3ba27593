"""What the gateway process holds once it serves, kept out of the cyclic garbage collector's way.

mitmproxy keeps each finished flow in a reference cycle of its own (an HTTP stream holds its own
bound handler), so every request leaves some sixty objects (flow, messages, stream, buffers) for
the cyclic collector. That is cheap in its young generations, but each full collection also walks
everything the process made before serving (mitmproxy's modules, the config, the certificates):
50-60 ms with the event loop stopped, a few times a minute under load, which was one lean worker's
p99 latency. `gc.freeze()` once serving starts moves all of that to a generation no collection
walks; what comes later (a reloaded config, flows) is collected as before.
"""

from __future__ import annotations

import gc


class StartupHeap:
    def running(self) -> None:
        gc.collect()  # what startup left as garbage is freed, not frozen
        gc.freeze()
