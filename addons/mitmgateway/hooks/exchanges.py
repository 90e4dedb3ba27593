"""The response side: what the steps asked for once the upstream (or the gateway) answers.

`Exchanges` holds the request context of each flow the gate let through, from its pipeline's
end to its response's: the steps' callbacks live there (rate-limit headers, the hop-by-hop
strip, response transformers, the cache). A 101 the gateway did not forward is refused here.
"""

from __future__ import annotations

import logging
import weakref

from mitmproxy import http

from ..answers import BAD_GATEWAY, closing_answer_to
from ..config.loader import STREAM_BODIES_OVER
from ..context import RequestContext
from ..decisions import record_decision
from ..headers import declared_length
from ..mitm.upgrades import RefusedSwitches, switch_forwarded
from ..observe.access_log import AccessLog, StreamedBytes

logger = logging.getLogger("mitmgateway")

SWITCH_REFUSED = "upstream switched protocols"
Exchanges = weakref.WeakKeyDictionary[http.HTTPFlow, RequestContext]


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
                # A streamed body is never kept: the access log counts its bytes as they pass.
                flow.response.stream = StreamedBytes(context.record) if self.access_log.enabled else True
        if flow.response is not None:
            context.responded(flow.response)

    def _refuse_switch(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        record = flow.metadata.setdefault("gateway", {})
        logger.warning("upstream %s switched protocols unasked: answered 502", record.get("upstream"))
        if (context := self.exchanges.pop(flow, None)) is not None:
            context.finished()
        self._refused_switches.refuse(flow.response)
        record["upstreamSwitchedProtocols"] = True
        flow.response = closing_answer_to(flow, 502, BAD_GATEWAY)
        record_decision(flow, SWITCH_REFUSED, record.get("apiEndpoint"), record.get("pipeline"))

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get("gateway", {}).get("upstreamSwitchedProtocols"):
            # mitmproxy went on to read the 101's (empty) body into the answer that replaced it.
            flow.response = closing_answer_to(flow, 502, BAD_GATEWAY)
        context = self.exchanges.pop(flow, None)
        if context is not None and flow.response is not None:
            context.body_ready(flow.response)

    def error(self, flow: http.HTTPFlow) -> None:
        context = self.exchanges.pop(flow, None)
        if context is not None:
            context.finished()
