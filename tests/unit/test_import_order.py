"""Every module of the package can be the first one imported (a plugin imports what it needs,
in its own order): no circular import depends on which comes first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mitmgateway

CHECK = r"""
import importlib, pkgutil, sys
import mitmgateway
walked = pkgutil.walk_packages(mitmgateway.__path__, "mitmgateway.")
names = sorted(m.name for m in walked if not m.name.endswith(".__main__"))  # __main__ runs the CLI
failed = []
for name in names:
    # Each from scratch: the package's own modules forgotten, the libraries' kept (fast).
    for loaded in [m for m in sys.modules if m.split(".")[0] == "mitmgateway"]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print(len(names))
for failure in failed:
    print(failure)
"""


def test_each_module_imports_first():
    root = Path(mitmgateway.__file__).parent.parent
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    count, *failed = out.splitlines()
    assert int(count) > 50  # the walk found the package's modules
    assert failed == []
