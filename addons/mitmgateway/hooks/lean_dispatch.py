"""mitmdump's and mitmweb's events dispatched as the lean runner dispatches them.

For each event of each flow, mitmproxy's addon manager walks all its ~35 addons and their
children with getattr, whether they handle the event or not: under ``mitmdump -s`` that walk cost
more than the gateway's own work. While the gateway is loaded, the manager looks each event's
handlers up once (mitm/dispatch.py); every addon, option and command of mitmdump and mitmweb is
still there and called as before (``-w``, ``--set``, mitmweb's intercept and replay). Unloading
or reloading the gateway's code puts mitmproxy's own manager back first.
"""

from __future__ import annotations

from mitmproxy import ctx

from ..mitm import dispatch


class LeanDispatch:
    def __init__(self) -> None:
        self._installed = False

    def load(self, loader) -> None:
        self._installed = dispatch.install(ctx.master)

    def done(self) -> None:
        if self._installed:
            dispatch.uninstall(ctx.master)
            self._installed = False
