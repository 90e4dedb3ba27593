"""Reloading a script mitmproxy loaded with ``-s``, when something else than the file changed.

Written against mitmproxy 11.0's ``addons/script.py``: the ``ScriptLoader`` addon holds one
``Script`` per ``-s`` file (its ``addons``, each with ``fullpath``), whose ``loadscript()``
re-executes it, which is what mitmproxy's own watcher calls when the file itself changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mitmproxy import ctx
from mitmproxy.addons import script


def loaded_script(path: Path) -> Any | None:
    """mitmproxy's Script addon for `path`, if it was loaded with -s."""
    for addon in ctx.master.addons.chain:
        if isinstance(addon, script.ScriptLoader):
            for loaded in addon.addons:
                if Path(loaded.fullpath).resolve() == path:
                    return loaded
    return None


def reload_script(loaded: Any) -> None:
    loaded.loadscript()
