from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import ROOT, Gateway, RedisServer, Upstream, free_port

sys.path.insert(0, str(ROOT / "scripts"))
from gen_keys import generate
from mint_token import mint
from processes import walkthrough_config as render_walkthrough


def one_pipeline(service_url: str, steps: str, *, endpoint: str = "host: '*'", extra: str = "") -> str:
    """A config with one apiEndpoint, one service and one pipeline; `steps` is YAML, one per line.

    ``{port}`` is left for `start_gateway` to fill in.
    """
    step_lines = "\n".join(f"      {line}" for line in steps.strip().splitlines())
    return (
        "http: {port: PORT, hostname: 127.0.0.1}\n"
        f"apiEndpoints: {{api: {{{endpoint}}}}}\n"
        f"serviceEndpoints: {{backend: {{url: '{service_url}'}}}}\n"
        "policies: [jwt, proxy, rate-limit, key-auth, basic-auth]\n"
        f"{extra}"
        "pipelines:\n"
        "  api:\n"
        "    apiEndpoints: [api]\n"
        "    policies:\n"
        f"{step_lines}\n"
    ).replace("PORT", "{port}")


EVERY_POLICY = (
    "policies: [cache, log, cors, rate-limit, key-auth, expression, headers, request-transformer, "
    "response-transformer, terminate, proxy, jwt, basic-auth]"
)


def every_policy_pipeline(upstream_url: str, steps: str) -> str:
    """`one_pipeline`, with every built-in policy declared."""
    return one_pipeline(upstream_url, steps).replace(
        "policies: [jwt, proxy, rate-limit, key-auth, basic-auth]", EVERY_POLICY
    )


@pytest.fixture(scope="session")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate(tmp_path_factory.mktemp("rsa"), "rsa")


@pytest.fixture(scope="session")
def ec_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate(tmp_path_factory.mktemp("ec"), "ec")


@pytest.fixture(scope="session")
def token(rsa_keys: tuple[Path, Path]) -> str:
    return mint(rsa_keys[0], "demo-user")


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, Upstream]]:
    started = {name: Upstream(name) for name in ("customers", "orders")}
    yield started
    for upstream in started.values():
        upstream.stop()


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mitmproxy-confdir")


@pytest.fixture
def walkthrough_config(upstreams: dict[str, Upstream], rsa_keys: tuple[Path, Path]) -> Callable[[int], str]:
    def render(port: int) -> str:
        return render_walkthrough(port, upstreams["customers"].url, upstreams["orders"].url, rsa_keys[1])

    return render


@pytest.fixture
def start_gateway(tmp_path: Path, confdir: Path) -> Iterator[Callable[..., Gateway]]:
    """Start a real mitmdump with our addon on `config` text ({port} is filled in)."""
    started: list[Gateway] = []

    def start(config: str | Callable[[int], str], *, name: str = "gateway.config.yml", **kwargs) -> Gateway:  # type: ignore[no-untyped-def]
        port = free_port()
        text = config(port) if callable(config) else config.replace("{port}", str(port))
        path = tmp_path / name
        path.write_text(text)
        gateway = Gateway(path, port, confdir, **kwargs)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()
