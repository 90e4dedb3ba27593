"""The entry mitmproxy loads: ``mitmdump -s addons/gateway.py`` (or mitmweb).

mitmproxy re-executes this file when it changes, and `PackageReloader` asks it to when any
module of the mitmgateway package changes. Dropping the package's cached modules first makes each
execution import the code as it is now on disk.
"""

import sys
from pathlib import Path

_SOURCE_ROOT = str(Path(__file__).resolve().parent)
if _SOURCE_ROOT not in sys.path:
    sys.path.insert(0, _SOURCE_ROOT)
for _name in [m for m in sys.modules if m == "mitmgateway" or m.startswith("mitmgateway.")]:
    del sys.modules[_name]

from mitmgateway.hooks import gateway_addons  # noqa: E402
from mitmgateway.hooks.reloader import PackageReloader  # noqa: E402

addons = [*gateway_addons(), PackageReloader(Path(__file__))]
