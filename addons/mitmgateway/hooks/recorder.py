"""Recording traffic to replay against another config (what-if): each flow, in mitmproxy's own
flow format, with its decision, the request exactly as the client sent it and the upstream's
answer.

A flow mitmproxy saves holds the request as the gateway forwarded it (the upstream's Host, a
stripped path, headers added and removed) and the response as the client got it; replaying a
change needs the client's request and the upstream's response. So `RecordingTap`, which runs
before the gate and the response side, keeps their state in ``flow.metadata``
(``gatewayClientRequest``, ``gatewayUpstreamResponse``; bodies once they have arrived, unless
they streamed through), and `Recorder`, the last of the gateway's addons, writes the flow when
it ends.
The file is what ``mitmdump -w`` writes: `mitmproxy.io.FlowReader` reads it, ``mitmweb -r``
opens it.

Options: ``gateway_record`` (the file; empty: off), ``gateway_record_max_bytes`` (the file is
rotated to FILE.1, FILE.2... beyond this size; ``gateway_record_keep`` of them are kept),
``gateway_record_sample`` (percent of requests recorded), ``gateway_record_credentials`` (false:
Authorization, Proxy-Authorization, Cookie, and every header and query parameter an auth step
read a credential from, are removed before writing, and ``gatewayCredentialsStripped`` names
them). A recording holds
credentials: the file is created readable by its owner only.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from mitmproxy import ctx, exceptions, http, io

from ..decision import Decision

logger = logging.getLogger("mitmgateway")

CLIENT_REQUEST_KEY = "gatewayClientRequest"
UPSTREAM_RESPONSE_KEY = "gatewayUpstreamResponse"
STRIPPED_KEY = "gatewayCredentialsStripped"
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")
"""Left out of a recording without credentials, besides those an auth step read one from."""
_RECORDING = "gatewayRecorded"


def strip_credentials(flow: http.HTTPFlow, client_state: dict[str, Any]) -> None:
    """Remove what proves an identity from the recorded requests (the client's and the
    forwarded): the usual credential headers, and the headers and query parameters an auth step
    of this request read one from."""
    decision = Decision.recorded(flow) or Decision()
    headers = {*CREDENTIAL_HEADERS, *(h.lower() for h in decision.secret_headers)}
    client = http.Request.from_state(dict(client_state))
    removed = sorted({h for h in headers if h in client.headers})
    removed += sorted({f"?{q}" for q in decision.secret_query_params if q in client.query})
    for request in (client, flow.request):
        for name in headers:
            request.headers.pop(name, None)  # every field of that name, in any case
        for name in decision.secret_query_params:
            request.query.pop(name, None)
    client_state.update(headers=client.headers.fields, path=client.data.path)
    # What was removed (``?name``: a query parameter), so that a replay knows which requests
    # carried a credential it cannot check again.
    flow.metadata[STRIPPED_KEY] = removed


class RecordingTap:
    """Before the gate and the response side: what the client sent, and what the upstream
    answered, for the flows `recorder` will write and those a shadow config decides again
    (`also_for`: whether one is in place)."""

    def __init__(self, recorder: Recorder, also_for: Callable[[], bool] = lambda: False) -> None:
        self.recorder = recorder
        self.also_for = also_for

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.is_replay:
            return
        recording = self.recorder.path is not None
        if recording:
            sample = ctx.options.gateway_record_sample
            recording = sample >= 100 or random.uniform(0, 100) < sample
        if recording or self.also_for():
            flow.metadata[CLIENT_REQUEST_KEY] = flow.request.get_state()
        if recording:
            flow.metadata[_RECORDING] = True

    def request(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(CLIENT_REQUEST_KEY)
        if state is not None and not flow.request.stream:
            state["content"] = flow.request.raw_content

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if CLIENT_REQUEST_KEY not in flow.metadata or flow.response is None:
            return
        decision = Decision.recorded(flow)
        if decision is not None and decision.answered_by is None:  # proxied: the upstream answered
            flow.metadata[UPSTREAM_RESPONSE_KEY] = flow.response.get_state()

    def response(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(UPSTREAM_RESPONSE_KEY)
        if state is not None and flow.response is not None and not flow.response.stream:
            state["content"] = flow.response.raw_content


class Recorder:
    def __init__(self) -> None:
        self._file: BinaryIO | None = None
        self._writer: io.FlowWriter | None = None
        self.path: Path | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "gateway_record",
            str,
            "",
            "Record each flow, with its decision and the request as the client sent it, to this "
            "file (mitmproxy's flow format, owner-readable only), to replay against another config.",
        )
        loader.add_option(
            "gateway_record_max_bytes", int, 100 << 20, "Rotate the recording beyond this size."
        )
        loader.add_option("gateway_record_keep", int, 5, "Rotated recordings kept (FILE.1 is the newest).")
        loader.add_option("gateway_record_sample", int, 100, "Percent of requests recorded.")
        loader.add_option(
            "gateway_record_credentials",
            bool,
            True,
            "Keep credentials in the recording (false: Authorization, Cookie and query-string "
            "credentials are removed before writing).",
        )

    def configure(self, updated: set[str]) -> None:
        if "gateway_record_sample" in updated and not 0 <= ctx.options.gateway_record_sample <= 100:
            raise exceptions.OptionsError("gateway_record_sample is a percentage: 0 to 100")
        if "gateway_record" in updated:
            self._close()
            self.path = Path(ctx.options.gateway_record).expanduser() if ctx.options.gateway_record else None

    def done(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.pop(_RECORDING, False) or self.path is None:
            return
        if not ctx.options.gateway_record_credentials:
            strip_credentials(flow, flow.metadata[CLIENT_REQUEST_KEY])
        try:
            writer = self._open()
            writer.add(flow)
            assert self._file is not None
            self._file.flush()
        except OSError as e:
            logger.warning("recording to %s failed, this flow is not recorded: %s", self.path, e)
            self._close()

    def _open(self) -> io.FlowWriter:
        assert self.path is not None
        if self._file is not None and self._file.tell() >= ctx.options.gateway_record_max_bytes:
            self._close()
            self._rotate(self.path, ctx.options.gateway_record_keep)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "ab")
            self._writer = io.FlowWriter(self._file)
        return self._writer

    @staticmethod
    def _rotate(path: Path, keep: int) -> None:
        """FILE → FILE.1 → FILE.2 ...; the oldest beyond `keep` goes."""
        for i in range(keep, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if i == keep:
                older.unlink(missing_ok=True)
            elif older.exists():
                older.rename(path.with_name(f"{path.name}.{i + 1}"))
        if keep:
            path.rename(path.with_name(f"{path.name}.1"))
        else:
            path.unlink()
