"""whatif/flowfile.py: flow files read as mitmproxy reads them, keeping what a replay reads."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy import io as mitmio
from mitmproxy.io import tnetstring
from mitmproxy.test import tflow

from mitmgateway.whatif import flowfile


def _file(*flows: object) -> bytes:
    out = io.BytesIO()
    writer = mitmio.FlowWriter(out)
    for flow in flows:
        writer.add(flow)  # type: ignore[arg-type]
    return out.getvalue()


def _resolved(state: dict) -> dict:
    return {k: v.value() if isinstance(v, flowfile.Deferred) else v for k, v in state.items()}


def _http_flow(n: int) -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.path = f"/items/{n}"
    flow.request.headers["Authorization"] = "Bearer x" * n
    flow.metadata["gateway"] = {"steps": [["jwt", "passed"]], "user": {"sub": "s", "exp": 1.5, "ok": True}}
    flow.comment = "left out"
    return flow


def test_each_http_flow_has_what_replay_reads_as_mitmproxy_read_it():
    flows = [_http_flow(n) for n in range(3)]
    data = _file(flows[0], tflow.ttcpflow(), flows[1], flows[2])
    states = flowfile.http_states(data, "f.mitm")
    assert [s["id"] for s in states] == [f.id for f in flows]  # the TCP flow is left out
    stream = io.BytesIO(data)
    full = [tnetstring.load(stream) for _ in range(4)]
    for state, expected in zip(states, [full[0], full[2], full[3]], strict=True):
        assert isinstance(expected, dict)
        resolved = _resolved(state)
        # The request and response are read when asked for.
        assert isinstance(state["request"], flowfile.Deferred)
        assert set(resolved) == {"type", "version", "id", "request", "response", "metadata", "client_conn"}
        for key in ("type", "version", "id", "request", "response", "metadata"):
            assert resolved[key] == expected[key], key
        assert resolved["client_conn"] == {k: expected["client_conn"][k] for k in resolved["client_conn"]}
        assert set(resolved["client_conn"]) == set(flowfile.REPLAYED["client_conn"])  # type: ignore[arg-type]


def test_a_flow_of_an_older_format_version_is_migrated_whole():
    flow = _http_flow(1)
    state = flow.get_state()
    state["version"] = 20  # mitmproxy's 20 → 21 migration adds nothing this flow lacks
    data = tnetstring.dumps(state)
    (read,) = flowfile.http_states(data, "f.mitm")
    assert read["version"] == 21
    assert read["request"]["path"] == b"/items/1"
    assert "server_conn" in read  # read by mitmproxy, whole


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"12:not a flow", "cut short: the flow at byte 0"),
        (b"x:", "no length prefix at byte 0"),
        (b"3:0:~?", "a bad value at byte 0"),
        (b"9:2:id;1:b?}", "a bad value at byte 7"),
        (b"8:1:a,1:b?}", "no value at byte 6"),  # where a value not read is stepped over
        (b"5:2:id;}", "no length prefix at byte 7"),  # a key without its value
        (b"4:0:~]}", "not a flow"),
    ],
)
def test_malformed_files_are_refused_with_where(data: bytes, reason: str):
    with pytest.raises(ValueError, match=reason):
        flowfile.http_states(data, "f.mitm")


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(min_value=0), flip=st.integers(min_value=0), byte=st.integers(0, 255))
def test_a_damaged_file_is_refused_or_read_never_a_crash(cut: int, flip: int, byte: int):
    data = bytearray(_file(_http_flow(2), _http_flow(3)))
    data[flip % len(data)] = byte
    damaged = bytes(data[: max(1, cut % (len(data) + 1))])
    try:
        states = flowfile.http_states(damaged, "f.mitm")
    except ValueError:
        return
    for state in states:  # what it read is a flow's state, and each deferred part parses or says where
        assert isinstance(state, dict)
        for part in state.values():
            if isinstance(part, flowfile.Deferred):
                try:
                    part.value()
                except flowfile.UnreadablePart as e:
                    assert str(e).startswith("f.mitm: not a flow file")


def _damaged_response(flow: http.HTTPFlow) -> bytes:
    """A flow file whose one flow's response has a bad status code value (a bad type tag)."""
    data = _file(flow)
    at = data.index(b"11:status_code;3:200#") + len(b"11:status_code;3:200")
    return data[:at] + b"?" + data[at + 1 :]


def test_a_part_read_later_says_where_it_is_malformed(tmp_path):
    from mitmgateway.hooks.recorder import CLIENT_REQUEST_KEY
    from mitmgateway.whatif import recorded
    from mitmgateway.whatif.offline import OfflineGateway
    from mitmgateway.whatif.replay import replay
    from mitmgateway.whatif.report import Progress

    gateways = _http_flow(1)
    gateways.metadata[CLIENT_REQUEST_KEY] = gateways.request.get_state()
    file = tmp_path / "damaged.mitm"
    file.write_bytes(_damaged_response(gateways))
    (flow,) = recorded.read_flows([file])  # the response is read for the recorded outcome only
    with pytest.raises(flowfile.UnreadablePart, match=r"damaged\.mitm: not a flow file: .* at byte \d+"):
        flow.outcome()
    # Read, for a replay, by the process that works out the befores: reported the same way.
    config = tmp_path / "gateway.config.yml"
    config.write_text("http: {port: 8080}\napiEndpoints: {}\nserviceEndpoints: {}\npipelines: {}\n")
    with pytest.raises(flowfile.UnreadablePart, match=r"damaged\.mitm: not a flow file: .* at byte \d+"):
        replay([flow], OfflineGateway(config, {}), None, Progress(1))
    # Recorded by plain mitmproxy: its response is the upstream's, read with the file.
    file.write_bytes(_damaged_response(_http_flow(2)))
    with pytest.raises(recorded.UnreadableFlows, match=r"damaged\.mitm: not a flow file: .* at byte \d+"):
        recorded.read_flows([file])
