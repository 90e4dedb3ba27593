"""Live code reload for the whole package, not just the script mitmproxy was given.

mitmproxy re-executes a ``-s`` script when that one file changes. Edits to the modules it imports
should take effect the same way, so this addon watches them and asks mitmproxy's script loader to
reload the entry script, which re-imports the package (see gateway.py).

A reload that fails to import would leave mitmproxy without the gateway (and without this watcher,
so fixing the file would not bring it back). So the changed package is first imported in a
separate interpreter: only code that imports is loaded; otherwise the error is logged once, with
its file and line, the previous code keeps serving, and the next save is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from pathlib import Path

from ..mitm.scripts import loaded_script, reload_script

logger = logging.getLogger("mitmgateway")

PACKAGE_DIR = Path(__file__).resolve().parents[1]
POLL_SECONDS = 1.0
TRIAL_TIMEOUT_SECONDS = 60
# What gateway.py imports; importing it imports every module the gateway uses.
TRIAL = "import mitmgateway.hooks, mitmgateway.hooks.reloader, mitmgateway.runner, mitmgateway.pool"
_TRACEBACK_PLACE = re.compile(r'File "([^"]+)", line (\d+)')


async def import_error(source_root: Path) -> str | None:
    """Why the package under `source_root` does not import as it is now on disk, or None."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root), os.environ.get("PYTHONPATH", "")])}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    trial = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TRIAL,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(trial.communicate(), TRIAL_TIMEOUT_SECONDS)
    except TimeoutError:
        trial.kill()
        await trial.wait()
        return f"importing it took over {TRIAL_TIMEOUT_SECONDS} s"
    if trial.returncode == 0:
        return None
    text = stderr.decode(errors="replace").strip()
    reason = text.splitlines()[-1] if text else f"exit status {trial.returncode}"
    places = [(f, n) for f, n in _TRACEBACK_PLACE.findall(text) if Path(f).is_relative_to(source_root)]
    return f"{places[-1][0]}, line {places[-1][1]}: {reason}" if places else reason


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
        # Taken as the code is loaded: a save before the watch starts is a change too.
        self._loaded_mtimes = _source_mtimes(PACKAGE_DIR)

    def running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        before = self._loaded_mtimes
        refused: str | None = None
        while True:
            await asyncio.sleep(POLL_SECONDS)
            now = _source_mtimes(PACKAGE_DIR)
            if now == before:
                continue
            before = now
            error = await import_error(PACKAGE_DIR.parent)
            if error is not None:
                if error != refused:
                    logger.error("gateway code change not loaded, the previous code still serves: %s", error)
                refused = error
                continue
            loaded = loaded_script(self.entry_script)
            if loaded is None:
                logger.warning("package code changed, but %s was not loaded as a script", self.entry_script)
                continue
            logger.info("gateway code changed, reloading")
            self._task = None  # reloading replaces this addon; the new one watches from here
            reload_script(loaded)
            return
