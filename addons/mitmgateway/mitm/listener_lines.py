"""mitmproxy's lines about the gateway's listeners, in the gateway's words.

mitmproxy names a listener by its mode ("reverse proxy to http://... listening at *:8080"), and
reverse mode needs a target, which the gateway gives a placeholder: every request is routed by a
pipeline. Those lines would send a reader to the placeholder, so a filter on the two loggers that
write them says "gateway" instead. (mitmweb's status bar shows the `mode` option itself, which
only mitmweb's front end could word differently: the placeholder's name explains itself there.)
"""

from __future__ import annotations

import logging

# Reverse mode's target: never connected to (the reserved .invalid name makes sure nothing could
# ever reach a default), and named for what it means where mitmweb shows it.
PLACEHOLDER_TARGET = "http://routed-by-pipelines.invalid"
_MITMPROXY_WORDS = f"reverse proxy to {PLACEHOLDER_TARGET}"
_LOGGERS = ("mitmproxy.proxy.mode_servers", "mitmproxy.addons.proxyserver")


def reverse_mode(hostname: str | None, port: int) -> str:
    """The mitmproxy mode spec of a gateway listener."""
    listen = f"{hostname}:{port}" if hostname else str(port)
    return f"reverse:{PLACEHOLDER_TARGET}@{listen}"


class ListenerLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and _MITMPROXY_WORDS in record.msg:
            # These lines are formatted already (f-strings, no args).
            record.msg = record.msg.replace(_MITMPROXY_WORDS, "gateway")
        return True

    def install(self) -> None:
        for name in _LOGGERS:
            logging.getLogger(name).addFilter(self)

    def uninstall(self) -> None:
        for name in _LOGGERS:
            logging.getLogger(name).removeFilter(self)
