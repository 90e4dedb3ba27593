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

import functools
import hashlib
import os
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mitmproxy import connection, http
from mitmproxy.proxy import mode_specs

from ..client_certificates import ClientCertificate
from ..decision import METADATA_KEY, Decision
from ..headers import header_values, set_headers
from ..hooks.recorder import CLIENT_REQUEST_KEY, STRIPPED_KEY, UPSTREAM_RESPONSE_KEY
from ..ids import IdSource
from ..mitm.messages import from_live_state
from ..observe.tracing import is_valid_traceparent
from . import flowfile
from .forked import ForkFailed, forked, received
from .outcome import Outcome


class UnreadableFlows(Exception):
    """A file that is not a flow file (its name and why)."""


SECOND_PART = "the process reading the file's second part"
PARALLEL_BYTES = 4 << 20
"""A file this large is read by two processes (parsing is most of a replay's time)."""


def read_flows(paths: Iterable[Path]) -> list[Recorded]:
    """The HTTP flows in `paths`, in the order their requests came (then as recorded).

    Each is kept as (part of) the state mitmproxy saved, migrated to this mitmproxy's version,
    not as a flow: a replay needs only a few of its parts, and building whole flows (four objects
    each) would cost as much as reading the file."""
    flows: list[Recorded] = []
    with flowfile.gc_paused():
        for path in paths:
            try:
                read = list(map(Recorded, _read(path.read_bytes(), str(path))))
                for recorded in read:
                    if not recorded.by_gateway:  # plain mitmproxy's: a replay reads them all
                        recorded.read_deferred()
                flows.extend(read)
            except flowfile.UnreadablePart as e:  # (it names the file)
                raise UnreadableFlows(str(e)) from None
            except (OSError, ValueError, TypeError, KeyError) as e:
                raise UnreadableFlows(f"{path}: {e or 'not a flow file'}") from None
        return sorted(flows, key=lambda f: f.started)  # stable: ties keep their order


def _read(data: bytes, source: str) -> list[dict[str, Any]]:
    if len(data) < PARALLEL_BYTES or (os.cpu_count() or 1) < 2:
        return flowfile.http_states(data, source)
    starts = flowfile.flow_starts(data)
    # The other process also pickles its states and sends them: it takes the smaller part.
    middle = starts[len(starts) * 3 // 5]
    try:
        second_part = functools.partial(_parse_for_parent, data[middle:], source, middle)
        with forked(second_part, SECOND_PART) as from_child:
            first = flowfile.http_states(data[:middle], source)
            with flowfile.gc_paused():  # unpickling the other part is ten times faster without it
                ok, second = received(from_child, SECOND_PART)  # type: ignore[misc]
    except ForkFailed as e:
        raise ValueError(str(e)) from None
    if not ok:
        raise ValueError(second)
    return first + second


def _parse_for_parent(data: bytes, source: str, offset: int, to_parent: Connection) -> None:
    try:
        to_parent.send((True, flowfile.http_states(data, source, offset)))
    except (ValueError, TypeError, KeyError) as e:
        to_parent.send((False, str(e) or "not a flow file"))


_listener = functools.lru_cache(maxsize=64)(mode_specs.ProxyMode.parse)
"""A recorded listener spec, parsed once (its ProxyMode is immutable): a recording has a few,
each on thousands of flows."""


class Recorded:
    """One recorded flow, read for replay (from the state mitmproxy saved it as)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def _part(self, name: str) -> Any:
        """A part of the state, parsed (once) if its reading was deferred (`UnreadablePart`:
        it is malformed)."""
        part = self.state.get(name)
        if isinstance(part, flowfile.Deferred):
            part = self.state[name] = part.value()
        return part

    def read_deferred(self) -> None:
        for name, wanted in flowfile.REPLAYED.items():
            if wanted is flowfile.DEFER:
                self._part(name)

    @classmethod
    def of_flow(cls, flow: http.HTTPFlow) -> Recorded:
        return cls(flow.get_state())

    @property
    def metadata(self) -> dict[str, Any]:
        return self.state["metadata"]

    @property
    def id(self) -> str:
        return self.state["id"]

    @property
    def started(self) -> float:
        # The gateway's recording has it beside the request as the client sent it.
        request = self.metadata[CLIENT_REQUEST_KEY] if self.by_gateway else self._part("request")
        return request["timestamp_start"] or 0.0

    @property
    def by_gateway(self) -> bool:
        return CLIENT_REQUEST_KEY in self.metadata

    @property
    def incomplete(self) -> bool:
        """Decided by the gateway, but saved without the request as the client sent it."""
        return not self.by_gateway and METADATA_KEY in self.metadata

    @property
    def decision(self) -> Decision | None:
        return Decision(self.metadata.get(METADATA_KEY) or {}) if self.by_gateway else None

    @property
    def client_certificate(self) -> ClientCertificate | None:
        """The certificate the recorded client presented, as the gateway found it."""
        found = (self.decision or Decision()).client_certificate
        return None if found is None else ClientCertificate.recorded(found["subject"], found["verified"])

    @property
    def removed_credentials(self) -> list[str]:
        """What a recording without credentials removed from this request that an auth step may
        have read (nothing: it kept them, or there were none). A cookie counts only where a step
        read one: none of the gateway's own do."""
        removed = self.metadata.get(STRIPPED_KEY)
        if removed is True:  # recorded before the names were kept
            return ["credentials"]
        if not isinstance(removed, list):
            return []
        read = {h.lower() for h in (self.decision or Decision()).secret_headers}
        return [name for name in removed if name != "cookie" or name in read]

    def client_request(self) -> http.Request:
        """A fresh copy of the request as the client sent it."""
        state = self.metadata[CLIENT_REQUEST_KEY] if self.by_gateway else self._part("request")
        return http.Request.from_state(dict(state))

    def recorded_response(self) -> http.Response | None:
        """The response as recorded: what the client got."""
        state = self._part("response")
        return None if state is None else http.Response.from_state(dict(state))

    def upstream_response(self) -> http.Response | None:
        """A fresh copy of what the upstream answered, if the recording has it."""
        if not self.by_gateway:
            # Plain mitmproxy: the other gateway's answer, the upstream's when it proxied.
            return self.recorded_response()
        state = self.metadata.get(UPSTREAM_RESPONSE_KEY)
        return None if state is None else http.Response.from_state(dict(state))

    def outcome(self) -> Outcome:
        """What the recording says the request came to: its decision, or (recorded by plain
        mitmproxy) its status."""
        response = self._part("response")
        if not self.by_gateway:
            return Outcome.recorded_status(None if response is None else response["status_code"])
        return Outcome.of_states(
            Decision(self.metadata.get(METADATA_KEY) or {}), self._part("request"), response
        )

    @functools.cached_property
    def _connections(self) -> tuple[connection.Client, connection.Server]:
        # Shared by the configs that decide this flow: the gateway reads them, never changes them.
        recorded = self.state["client_conn"]
        client = connection.Client(
            peername=tuple(recorded["peername"]),  # type: ignore[arg-type]
            sockname=tuple(recorded["sockname"]),  # type: ignore[arg-type]
            timestamp_start=recorded["timestamp_start"],
            proxy_mode=_listener(recorded["proxy_mode"]),
        )
        client.tls = recorded["tls"]
        client.sni = recorded["sni"]
        client.alpn = recorded["alpn"]
        return client, connection.Server(address=None)

    def fresh_flow(self) -> http.HTTPFlow:
        """A new flow holding the client's request, from the recorded client's address and
        listener, to decide again."""
        flow = http.HTTPFlow(*self._connections)
        flow.request = self.client_request()
        # With tracing, the gateway gave a client's valid traceparent its own client span as the
        # parent (hooks/tracing.py, before the gate): the replay forwards what was forwarded.
        recorded = self.decision.traceparent if self.decision is not None else None
        sent = header_values(flow.request, b"traceparent")
        if recorded and len(sent) == 1 and sent[0] != recorded and is_valid_traceparent(sent[0]):
            set_headers(flow.request, ((b"traceparent", recorded.encode()),))
        return flow

    def ids(self) -> IdSource:
        return RecordedIds(self)

    def describe(self) -> dict[str, object]:
        """Method, host and path as the client sent them, its address, its time."""
        request = self.client_request()
        decision = self.decision
        client = decision.client if decision is not None and decision.client else None
        peer = self.state["client_conn"]["peername"]
        return {
            "method": request.method,
            "host": request.host_header or request.pretty_host,
            "path": request.path,
            "client": client or (peer[0] if peer else None),
            "time": request.timestamp_start,
            "flow": self.id,
        }


class RecordedIds(IdSource):
    """The ids the recorded flow was given (its request id, the traceparent the gateway made up),
    else ids derived from the flow's own id: the same on every replay of it."""

    def __init__(self, recorded: Recorded) -> None:
        decision = recorded.decision
        self._request_id = decision.request_id if decision is not None else None
        self._traceparent = decision.traceparent if decision is not None else None
        self._seed = recorded.id

    def _derived(self, what: str, nbytes: int) -> str:
        return hashlib.blake2b(f"{self._seed}:{what}".encode(), digest_size=nbytes).hexdigest()

    def request_id(self) -> str:
        return self._request_id or self._derived("request id", 16)

    def traceparent(self) -> str:
        return self._traceparent or f"00-{self._derived('trace', 16)}-{self._derived('span', 8)}-01"


class LiveRecorded(Recorded):
    """A live flow the gateway just decided, read as a recording of it without copying it (a
    shadow config decides it again): the client's request and the upstream's answer as
    `RecordingTap` took them, made again without re-checking what mitmproxy checked already, and
    the flow's own connections (the gateway reads them, never changes them)."""

    def __init__(self, flow: http.HTTPFlow) -> None:
        super().__init__(
            {
                "id": flow.id,
                "metadata": flow.metadata,
                "request": {"timestamp_start": flow.request.timestamp_start},
            }
        )
        self._live_connections = flow.client_conn, flow.server_conn

    @property
    def _connections(self) -> tuple[connection.Client, connection.Server]:  # type: ignore[override]
        return self._live_connections

    def client_request(self) -> http.Request:
        return from_live_state(http.Request, self.metadata[CLIENT_REQUEST_KEY])

    def upstream_response(self) -> http.Response | None:
        state = self.metadata.get(UPSTREAM_RESPONSE_KEY)
        return None if state is None else from_live_state(http.Response, state)
