"""Live code reload for the whole package, not just the script mitmproxy was given.

mitmproxy re-executes a ``-s`` script when that one file changes. Edits to the modules it imports
should take effect the same way, so this addon watches them and asks mitmproxy's script loader to
reload the entry script, which re-imports the package (see gateway.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from mitmproxy import ctx
from mitmproxy.addons import script

logger = logging.getLogger("mitmgateway")

PACKAGE_DIR = Path(__file__).resolve().parent
POLL_SECONDS = 1.0


def _source_mtimes(root: Path) -> dict[Path, int]:
    mtimes = {}
    for path in root.rglob("*.py"):
        try:
            mtimes[path] = os.stat(path).st_mtime_ns
        except OSError:
            continue
    return mtimes


class PackageReloader:
    def __init__(self, entry_script: Path) -> None:
        self.entry_script = entry_script.resolve()
        self._task: asyncio.Task[None] | None = None

    def running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _entry_script_addon(self) -> script.Script | None:
        for addon in ctx.master.addons.chain:
            if isinstance(addon, script.ScriptLoader):
                for loaded in addon.addons:
                    if Path(loaded.fullpath).resolve() == self.entry_script:
                        return loaded
        return None

    async def _watch(self) -> None:
        before = _source_mtimes(PACKAGE_DIR)
        while True:
            await asyncio.sleep(POLL_SECONDS)
            now = _source_mtimes(PACKAGE_DIR)
            if now == before:
                continue
            before = now
            loaded = self._entry_script_addon()
            if loaded is None:
                logger.warning("package code changed, but %s was not loaded as a script", self.entry_script)
                continue
            logger.info("gateway code changed, reloading")
            self._task = None  # reloading replaces this addon; the new one watches from here
            loaded.loadscript()
            return
