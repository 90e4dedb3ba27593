"""Recorded flows as a replay reads them: the request as the client sent it, the upstream's
answer, the ids and the identity the recording kept.

Two kinds of recording are read. The gateway's own (``gateway_record``, hooks/recorder.py) keeps
the client's request and the upstream's response beside the flow, and its decision. A flow
recorded by plain mitmproxy (``mitmdump --mode reverse:... -w FILE``, in front of another gateway
such as Express Gateway) has neither: its request is the client's (as mitmproxy forwarded it; with
``--set keep_host_header=true`` its Host too), its response is the one the other gateway sent,
and its status is the baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import connection, exceptions, http, io

from ..decision import Decision
from ..hooks.recorder import CLIENT_REQUEST_KEY, STRIPPED_KEY, UPSTREAM_RESPONSE_KEY
from ..ids import IdSource


class UnreadableFlows(Exception):
    """A file that is not a flow file (its name and why)."""


def read_flows(paths: Iterable[Path]) -> list[http.HTTPFlow]:
    """The HTTP flows in `paths`, in the order their requests came (then as recorded)."""
    flows: list[http.HTTPFlow] = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                flows.extend(f for f in io.FlowReader(file).stream() if isinstance(f, http.HTTPFlow))
        except (OSError, exceptions.FlowReadException, ValueError) as e:
            raise UnreadableFlows(f"{path}: {e}") from None
    return sorted(flows, key=lambda f: f.request.timestamp_start)  # stable: ties keep their order


@dataclass(frozen=True)
class Recorded:
    """One recorded flow, read for replay."""

    flow: http.HTTPFlow

    @property
    def by_gateway(self) -> bool:
        return CLIENT_REQUEST_KEY in self.flow.metadata

    @property
    def decision(self) -> Decision | None:
        return Decision.recorded(self.flow) if self.by_gateway else None

    @property
    def removed_credentials(self) -> list[str]:
        """What a recording without credentials removed from this request (nothing: it kept
        them, or there were none)."""
        removed = self.flow.metadata.get(STRIPPED_KEY)
        return list(removed) if isinstance(removed, list) else []

    def client_request(self) -> http.Request:
        """A fresh copy of the request as the client sent it."""
        state = self.flow.metadata.get(CLIENT_REQUEST_KEY) if self.by_gateway else None
        return http.Request.from_state(dict(state) if state is not None else self.flow.request.get_state())

    def upstream_response(self) -> http.Response | None:
        """A fresh copy of what the upstream answered, if the recording has it."""
        if self.by_gateway:
            state = self.flow.metadata.get(UPSTREAM_RESPONSE_KEY)
            return None if state is None else http.Response.from_state(dict(state))
        # Plain mitmproxy: the other gateway's answer, the upstream's when it proxied.
        return None if self.flow.response is None else self.flow.response.copy()

    def fresh_flow(self) -> http.HTTPFlow:
        """A new flow holding the client's request, from the recorded client's address and
        listener, to decide again."""
        recorded = self.flow.client_conn
        client = connection.Client(
            peername=recorded.peername,
            sockname=recorded.sockname,
            timestamp_start=recorded.timestamp_start,
            proxy_mode=recorded.proxy_mode,
        )
        client.tls = recorded.tls
        client.sni = recorded.sni
        client.alpn = recorded.alpn
        flow = http.HTTPFlow(client, connection.Server(address=None))
        flow.request = self.client_request()
        return flow

    def ids(self) -> IdSource:
        return RecordedIds(self)

    def describe(self) -> dict[str, object]:
        """Method, host and path as the client sent them, its address, its time."""
        request = self.client_request()
        decision = self.decision
        client = decision.client if decision is not None and decision.client else None
        peer = self.flow.client_conn.peername
        return {
            "method": request.method,
            "host": request.host_header or request.pretty_host,
            "path": request.path,
            "client": client or (peer[0] if peer else None),
            "time": request.timestamp_start,
            "flow": self.flow.id,
        }


class RecordedIds(IdSource):
    """The ids the recorded flow was given (its request id, the traceparent the gateway made up),
    else ids derived from the flow's own id: the same on every replay of it."""

    def __init__(self, recorded: Recorded) -> None:
        decision = recorded.decision
        self._request_id = decision.request_id if decision is not None else None
        self._traceparent = decision.traceparent if decision is not None else None
        self._seed = recorded.flow.id

    def _derived(self, what: str, nbytes: int) -> str:
        return hashlib.blake2b(f"{self._seed}:{what}".encode(), digest_size=nbytes).hexdigest()

    def request_id(self) -> str:
        return self._request_id or self._derived("request id", 16)

    def traceparent(self) -> str:
        return self._traceparent or f"00-{self._derived('trace', 16)}-{self._derived('span', 8)}-01"


def recorded_flows(flows: Iterable[http.HTTPFlow]) -> Iterator[Recorded]:
    return (Recorded(f) for f in flows)
