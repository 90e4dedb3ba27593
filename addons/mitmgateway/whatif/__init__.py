"""What-if: recorded traffic decided again under another config, and the requests whose decision
would change listed (``mitmgateway whatif``).

- recorded.py: the flows a recording holds, read for replay;
- offline.py: `OfflineGateway`, the gateway's own hooks deciding them with no socket;
- outcome.py: what a request came to (`Outcome`), and how two outcomes differ;
- replay.py: each flow decided under the candidate (and a baseline) and compared;
- report.py: transitions grouped and counted, JSON, the changed flows, progress;
- cases.py: hand-written requests and the decision each must get;
- cli.py: the command.

Recording is the gateway's (hooks/recorder.py, ``gateway_record``).
"""

# The hooks first, whichever of this package's modules is imported first: the shadow config
# (hooks/shadow.py) uses the offline gateway, which uses the hooks' gate, so hooks/__init__.py,
# which composes them all, must run before any module here does.
from .. import hooks  # noqa: F401
