"""The gateway's event dispatch: mitmproxy's addon manager without its per-event walk, in the
lean runner and, installed in place while the gateway is loaded, in mitmdump and mitmweb.

Written against mitmproxy 11.0's ``addonmanager.AddonManager``: it overrides
``invoke_addon_sync``, ``trigger_event`` and ``handle_lifecycle`` and uses its private
``_iter_hooks`` (how the manager finds an addon's handler for an event) to build its table;
`install` changes the class of the manager mitmdump made, which holds all its state in instance
attributes the subclass shares.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, master

logger = logging.getLogger("mitmgateway")

_ADDON_SET_EVENTS = frozenset({"load", "configure", "running", "done"})


class DispatchTable(addonmanager.AddonManager):
    """mitmproxy's addon manager, minus the work it repeats for every event of every flow.

    The stock manager walks every addon (and their children) with getattr for each event, then
    triggers an `update` event after each lifecycle event. Here the handlers of each flow event
    are looked up once and remembered; any load, configure, running or done event (which is what
    a script load or reload, or an option change, goes through) drops the table. `update` is
    skipped when no addon handles it.
    """

    def __init__(self, gateway_master: master.Master) -> None:
        super().__init__(gateway_master)
        self._handlers: dict[str, list[Callable[..., Any]]] = {}

    def _handlers_for(self, event: hooks.Hook) -> list[Callable[..., Any]]:
        handlers = self._handlers.get(event.name)
        if handlers is None:
            handlers = []
            for addon in self.chain:
                try:
                    handlers.extend(func for _, func in self._iter_hooks(addon, event))
                except exceptions.AddonManagerError as e:  # as mitmproxy's manager: said, skipped
                    logger.error("Addon error: %s", e)
            self._handlers[event.name] = handlers
        return handlers

    def invoke_addon_sync(self, addon: Any, event: hooks.Hook) -> None:
        if event.name in _ADDON_SET_EVENTS:
            self._handlers.clear()
        super().invoke_addon_sync(addon, event)

    async def trigger_event(self, event: hooks.Hook) -> None:
        if event.name in _ADDON_SET_EVENTS:
            self._handlers.clear()
            await super().trigger_event(event)
            return
        args = event.args()
        for func in self._handlers_for(event):
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:
                logger.error("Addon error: %s", e, exc_info=True)

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        message = event.args()[0]
        # Asked before the event runs: a handler may unload the gateway (and this table with it).
        update = isinstance(message, flow.Flow) and bool(self._handlers_for(hooks.UpdateHook([])))
        await self.trigger_event(event)
        if update:
            await self.trigger_event(hooks.UpdateHook([message]))


def install(gateway_master: master.Master) -> bool:
    """Serve mitmdump's or mitmweb's events through the table too, for as long as the gateway is
    loaded: the manager they made is made a `DispatchTable` in place (its addons, options and
    state untouched). False if it already is one (the lean runner) or is not mitmproxy's own."""
    manager = gateway_master.addons
    if type(manager) is not addonmanager.AddonManager:
        return False
    manager.__class__ = DispatchTable
    manager._handlers = {}
    return True


def uninstall(gateway_master: master.Master) -> None:
    """Back to mitmproxy's own manager (the gateway unloaded, or reloading its code)."""
    manager = gateway_master.addons
    if type(manager) is DispatchTable:
        manager.__class__ = addonmanager.AddonManager
        del manager._handlers
