"""Logging a dependency that goes down and comes back (Redis, a JWKS provider): once each way.

Every failing request would otherwise log the same line; an outage is one error line when it
starts and one info line when it ends.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("mitmgateway")


class Outage:
    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, error: BaseException, consequence: str) -> None:
        if not self.down:
            self.down = True
            logger.error(
                "%s unavailable (%s): %s", self.what, str(error) or type(error).__name__, consequence
            )

    def recovered(self) -> None:
        if self.down:
            self.down = False
            logger.info("%s is back", self.what)
