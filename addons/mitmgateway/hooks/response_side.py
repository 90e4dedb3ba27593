"""The response side: what the steps asked for once the upstream (or the gateway) answers.

`Exchanges` (context.py) holds the request context of each flow the gate let through, from its pipeline's
end to its response's: the steps' callbacks live there (rate-limit headers, the hop-by-hop
strip, response transformers, the cache). A 101 the gateway did not forward is refused here.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from ..answers import BAD_GATEWAY, closing_answer_to
from ..bodies import STREAM_BODIES_OVER, BoundedCopy
from ..context import Exchanges
from ..decision import Decision
from ..headers import declared_length
from ..mitm.upgrades import RefusedSwitches
from ..observe.access_log import AccessLog, StreamedBytes
from .decide import refuse

logger = logging.getLogger("mitmgateway")

SWITCH_REFUSED = "upstream switched protocols"


def switch_forwarded(flow: http.HTTPFlow) -> bool:
    """Whether a 101 answers, with a WebSocket, the WebSocket handshake the gateway forwarded."""
    response = flow.response
    decision = Decision.recorded(flow)
    return (
        decision is not None
        and decision.upgrade == "websocket"
        and response is not None
        and response.headers.get("upgrade", "").strip().lower() == "websocket"
    )


def _response_streams(response: http.Response) -> bool:
    # Without a Content-Length, a response is chunked or read to its connection's end.
    length = declared_length(response)
    return length is None or length > STREAM_BODIES_OVER


class ResponseSide:
    def __init__(self, exchanges: Exchanges, access_log: AccessLog) -> None:
        self.exchanges = exchanges
        self.access_log = access_log
        self._refused_switches = RefusedSwitches()

    def load(self, loader) -> None:
        self._refused_switches.install()

    def done(self) -> None:
        self._refused_switches.uninstall()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is not None and response.status_code == 101 and not switch_forwarded(flow):
            # A switch the gateway did not forward (it removed the Upgrade): taking it would make
            # the connection a raw tunnel to the upstream that no policy judges. (Checked for
            # every flow, also one sent by the code before a reload.)
            self._refuse_switch(flow)
            return
        context = self.exchanges.get(flow)
        if context is None:
            return
        if not context.wants_body:
            del self.exchanges[flow]
            if flow.response is not None and _response_streams(flow.response):
                # A streamed body is never kept: the access log counts its bytes as they pass,
                # and a mirror keeps a copy of at most maxBodyBytes to compare.
                counted = StreamedBytes(context.decision) if self.access_log.enabled else None
                if context.mirror is not None:
                    flow.response.stream = BoundedCopy(context.mirror.spec.action.max_body_bytes, counted)
                else:
                    flow.response.stream = counted or True
        if flow.response is not None:
            context.responded(flow.response)

    def _refuse_switch(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        decision = Decision.of(flow)
        logger.warning("upstream %s switched protocols unasked: answered 502", decision.upstream)
        if (context := self.exchanges.pop(flow, None)) is not None:
            context.finished()
        self._refused_switches.refuse(flow.response)
        decision.upstream_switched_protocols = True
        refuse(flow, 502, BAD_GATEWAY, SWITCH_REFUSED, closing=True, routed=True)

    def response(self, flow: http.HTTPFlow) -> None:
        if (decision := Decision.recorded(flow)) is not None and decision.upstream_switched_protocols:
            # mitmproxy went on to read the 101's (empty) body into the answer that replaced it.
            flow.response = closing_answer_to(flow, 502, BAD_GATEWAY)
        context = self.exchanges.pop(flow, None)
        if context is not None and flow.response is not None:
            context.body_ready(flow.response)

    def error(self, flow: http.HTTPFlow) -> None:
        context = self.exchanges.pop(flow, None)
        if context is not None:
            context.finished()
