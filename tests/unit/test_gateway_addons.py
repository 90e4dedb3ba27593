"""The Gateway addon's own duties: refusing bad option changes, failing closed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from dataclasses import dataclass

import pytest
from mitmproxy import ctx, exceptions, http

from conftest import every_policy_pipeline
from gateway_unit import gateway_context, make_flow, running_gateway
from mitmgateway.hooks import gateway_addons
from mitmgateway.hooks.heap import StartupHeap
from mitmgateway.policies import POLICIES, Policy, register_policy

CONFIG = """\
http: {port: 8080}
apiEndpoints: {api: {host: '*'}}
serviceEndpoints: {backend: {url: 'http://127.0.0.1:9001'}}
policies: [POLICIES]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
STEPS
"""


def write(tmp_path, policies: str, steps: str, name: str = "gateway.config.yml"):
    path = tmp_path / name
    path.write_text(CONFIG.replace("POLICIES", policies).replace("STEPS", steps))
    return path


def test_sets_reverse_mode_on_the_configured_listener(tmp_path):
    path = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: backend}}]")
    with running_gateway(path):
        assert ctx.options.mode == ["reverse:http://routed-by-pipelines.invalid@8080"]
        assert ctx.options.connection_strategy == "lazy"
        assert ctx.options.keep_host_header is True


def test_invalid_config_set_at_run_time_is_refused_and_the_old_one_kept(tmp_path):
    good = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: backend}}]")
    bad = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: nope}}]", name="bad.yml")
    with running_gateway(good) as gateway:
        with pytest.raises(
            exceptions.OptionsError, match=r"bad\.yml:\d+:\d+: pipelines\.main\.policies\[0\]"
        ):
            ctx.options.update(gateway_config=str(bad))
        assert ctx.options.gateway_config == str(good)
        assert gateway.config.file == good


def test_without_a_valid_config_every_request_is_refused(tmp_path, caplog):
    bad = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: nope}}]")
    with gateway_context() as (gateway, tctx):
        tctx.options.update(gateway_config=str(bad))
        assert any(r.levelname == "ERROR" and "invalid gateway config" in r.message for r in caplog.records)
        flow = make_flow()
        gateway.requestheaders(flow)
        assert flow.response.status_code == 503
        assert flow.metadata["gateway"]["answeredBy"] == "no config"
        assert flow.comment == "gateway: no apiEndpoint matched; answered 503 by no config"
        # A replayed flow's record named where it first went: the refusal names no pipeline.
        replayed = make_flow()
        replayed.metadata["gateway"] = {"apiEndpoint": "api", "pipeline": "main", "answeredBy": None}
        gateway.requestheaders(replayed)
        assert (replayed.metadata["gateway"]["pipeline"], replayed.metadata["gateway"]["answeredBy"]) == (
            None,
            "no config",
        )


@dataclass(frozen=True)
class _NoAction:
    pass


class _BrokenPolicy(Policy):
    name = "broken"
    Action = _NoAction

    def __init__(self, action, build) -> None:
        pass

    def handle(self, ctx) -> None:
        ctx.routed = True
        raise RuntimeError("a bug in a policy")


@pytest.fixture
def broken_policy():
    register_policy(_BrokenPolicy)
    yield
    POLICIES.pop("broken")


def test_a_failing_policy_fails_closed(tmp_path, broken_policy):
    path = write(tmp_path, "broken", "      - broken:")
    with running_gateway(path) as gateway:
        flow = make_flow()
        gateway.requestheaders(flow)
        assert flow.response.status_code == 500
        assert flow.metadata["gateway"]["answeredBy"] == "gateway error"


def test_a_pipeline_without_proxy_ends_in_404(tmp_path):
    path = write(tmp_path, "rate-limit", "      - rate-limit: [{action: {max: 100}}]")
    with running_gateway(path) as gateway:
        flow = make_flow()
        gateway.requestheaders(flow)
        assert (flow.response.status_code, flow.response.text) == (404, "Not Found")
        assert flow.metadata["gateway"]["answeredBy"] == "no proxy step"


def test_flows_already_answered_are_left_alone(tmp_path):
    path = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: backend}}]")
    with running_gateway(path) as gateway:
        flow = make_flow()
        flow.response = http.Response.make(204)
        gateway.requestheaders(flow)
        assert flow.response.status_code == 204
        assert "gateway" not in flow.metadata


@dataclass(frozen=True)
class _WaitAction:
    answer: bool = False


class _WaitingPolicy(Policy):
    """A step that waits on I/O (as a shared store does), then maybe answers."""

    name = "waiting"
    Action = _WaitAction

    def __init__(self, action, build) -> None:
        self.answer = action.answer

    def handle(self, ctx):
        async def wait() -> None:
            await asyncio.sleep(0)
            ctx.decision.data.setdefault("waited", 0)
            ctx.decision.data["waited"] += 1
            if self.answer:
                ctx.answer(http.Response.make(418))

        return wait()


@pytest.fixture
def waiting_policy():
    register_policy(_WaitingPolicy)
    yield
    POLICIES.pop("waiting")


@pytest.mark.parametrize(
    "steps,status,waited,answered_by",
    [
        # Two waiting steps, then the proxy: every step runs, in order, after each wait.
        ("- waiting:\n- waiting:\n- proxy: [{action: {serviceEndpoint: backend}}]", None, 2, None),
        # The second waiting step answers: the pipeline ends there, the proxy never runs.
        (
            "- waiting:\n- waiting: [{action: {answer: true}}]\n"
            "- proxy: [{action: {serviceEndpoint: backend}}]",
            418,
            2,
            "waiting",
        ),
    ],
)
def test_steps_after_a_waiting_step_run_in_order(
    tmp_path, waiting_policy, steps, status, waited, answered_by
):
    indented = "\n".join(f"      {line}" for line in steps.splitlines())
    path = write(tmp_path, "waiting, proxy", indented)

    async def run() -> http.HTTPFlow:
        with running_gateway(path) as gateway:
            flow = make_flow()
            await gateway.requestheaders(flow)
            return flow

    flow = asyncio.run(run())
    assert (flow.response.status_code if flow.response else None) == status
    assert flow.metadata["gateway"]["waited"] == waited
    assert flow.metadata["gateway"]["answeredBy"] == answered_by
    assert (flow.request.host == "127.0.0.1") == (status is None)  # proxied only when not answered


def test_the_gateway_content_view_shows_the_decision_as_the_client_saw_it(tmp_path):
    from mitmproxy import contentviews

    path = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: backend}}]")
    with running_gateway(path) as gateway:
        flow = make_flow(host="shop.local", path="/a//b/%7Eme")
        gateway.requestheaders(flow)
        view = contentviews.get("Gateway")
        description, lines = view(b"", flow=flow, http_message=flow.request)
        assert description == "gateway decision"
        assert ["".join(text for _, text in line) for line in lines] == [
            "client asked: GET shop.local/a/b/~me",
            "target as sent: '/a//b/%7Eme'",
            "client: 192.0.2.10",
            "apiEndpoint: api",
            "pipeline: main",
            "proxied to: 127.0.0.1:9001",
            f"request id: {flow.metadata['gateway']['requestId']}",
            f"traceparent: {flow.metadata['gateway']['traceparent']}",
        ]
        # Proxied: the client's and the upstream's messages keep their usual views.
        assert view.render_priority(b"", flow=flow, http_message=flow.request) == 0
        gateway.done()
        # done removes it; a code reload then adds the new code's.
        assert contentviews.get("Gateway") is None


def test_large_bodies_stream_unless_a_step_needs_them(tmp_path):
    from gateway_unit import gateway_for, make_flow, upstream_response

    def flows(steps: str):  # type: ignore[no-untyped-def]
        text = every_policy_pipeline(
            "http://127.0.0.1:9", steps + "\n- proxy: [{action: {serviceEndpoint: backend}}]"
        )
        with gateway_for(tmp_path, text.replace("{port}", "8080")) as gateway:
            large, small = make_flow(method="POST"), make_flow(method="POST")
            large.request.headers["Content-Length"] = str(5 << 20)  # as announced by the client
            small.request.headers["Content-Length"] = "10"
            for flow in (large, small):
                gateway.requestheaders(flow)
                upstream_response(flow, gateway, {"Transfer-Encoding": "chunked"})
            return large, small

    large, small = flows("- log: [{action: {message: x}}]")
    assert large.request.stream is True and large.response.stream is True
    assert not small.request.stream and small.response.stream is True  # chunked: length unknown
    large, _ = flows(
        "- request-transformer: [{action: {body: {add: {a: \"'b'\"}}}}]\n"
        "- response-transformer: [{action: {body: {remove: [x]}}}]"
    )
    assert not large.request.stream and not large.response.stream


def test_what_the_process_holds_when_it_starts_serving_is_frozen_out_of_full_collections():
    class Node:
        pass

    addons = gateway_addons()
    assert isinstance(addons[-1], StartupHeap), "after every other addon's start"
    cycle = Node()
    cycle.itself = cycle  # garbage startup left behind: freed, not frozen
    left_behind = weakref.ref(cycle)
    del cycle
    gc.unfreeze()
    try:
        addons[-1].running()
        assert gc.get_freeze_count() > 1000
        assert left_behind() is None
    finally:
        gc.unfreeze()


def test_a_request_held_for_its_body_is_judged_once_it_arrives_and_forgotten_if_it_never_does(tmp_path):
    steps = (
        "      - terminate:\n"
        "          - condition: {name: not, condition: {name: json-schema, schema: {type: object}}}\n"
        "            action: {statusCode: 422}\n"
        "      - proxy: [{action: {serviceEndpoint: backend}}]\n"
    )
    with running_gateway(write(tmp_path, "terminate, proxy", steps)) as gateway:

        async def arrive(body: bytes | None) -> http.HTTPFlow:
            flow = make_flow(method="POST", headers={"Content-Type": "application/json"})
            flow.request.data.content = None  # headers only, as at requestheaders
            assert gateway.requestheaders(flow) is None
            assert flow.response is None and gateway.gate.holds_for_body(flow), "not judged yet"
            if body is None:
                gateway.gate.error(flow)  # the client went before its body came
            else:
                flow.request.data.content = body
                assert gateway.gate.request(flow) is None
            assert not gateway.gate.holds_for_body(flow)
            return flow

        valid, invalid, _ = [asyncio.run(arrive(body)) for body in (b"{}", b"[]", None)]
        assert valid.response is None and valid.request.host == "127.0.0.1", "valid: forwarded"
        assert invalid.response is not None and invalid.response.status_code == 422
