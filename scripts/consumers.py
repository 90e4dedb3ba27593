#!/usr/bin/env python3
"""``mitmgateway consumers``, under the name the README first gave it: manage consumers.yml."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "addons"))
from mitmgateway.consumers_tool import main

if __name__ == "__main__":
    main()
