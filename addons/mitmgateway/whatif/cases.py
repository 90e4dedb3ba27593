"""Hand-written what-if cases: requests, and the decision each must get, checked by the same
offline replay (for CI without recorded traffic, as Envoy's router check tool checks routes).

A cases file (YAML)::

    signingKey: keys/demo-private.pem   # signs the tokens cases ask for (kind valid, expired...)
    claims: {sub: demo-user}            # the tokens' claims (default: a sub)
    cases:
      - name: an order needs a token
        request: {method: GET, host: orders.local, path: /orders/1, client: 203.0.113.7}
        expect: {status: 401, policy: jwt, apiEndpoint: orders}
      - request: {host: orders.local, path: /orders/1, token: valid}
        expect: {status: 200, policy: proxied, serviceEndpoint: orders}

A request gives ``method`` (GET), ``host``, ``path`` (/), ``headers``, ``body``, ``client`` (its
address) and ``token``: ``valid``, ``expired``, ``not-yet-valid``, ``forged`` (signed by another
key), ``alg-none`` or ``malformed``, sent as a bearer token. ``expect`` names any of ``status``,
``policy`` (``proxied`` when the request goes upstream), ``apiEndpoint``, ``pipeline`` and
``serviceEndpoint``; a proxied request's upstream answers 200. Each case is decided afresh (no
counter or cache carries over from another); ``repeat: N`` sends its request N times, and the
last must get what ``expect`` says (a rate limit's answer, say).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mitmproxy import connection, http
from mitmproxy.proxy import mode_specs

from ..config.errors import ROOT, ConfigError, KeyPath
from ..config.schema import check_type, option, parse_fields, positive, require_list, require_mapping
from ..config.source import load_document
from ..hooks.recorder import CLIENT_REQUEST_KEY, UPSTREAM_RESPONSE_KEY
from .offline import OfflineGateway
from .outcome import Outcome
from .recorded import Recorded

TokenKind = Literal["valid", "expired", "not-yet-valid", "forged", "alg-none", "malformed"]


def _headers(raw: Any, path: KeyPath) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), check_type(str, v, path.key(k))) for k, v in require_mapping(raw, path).items())


@dataclass(frozen=True)
class CaseRequest:
    host: str = option("host")
    method: str = option("method", "GET")
    path: str = option("path", "/")
    headers: tuple[tuple[str, str], ...] = option("headers", (), parse=_headers)
    body: str = option("body", "")
    client: str = option("client", "192.0.2.1")
    token: TokenKind | None = option("token", None)


@dataclass(frozen=True)
class CaseExpectation:
    status: int | None = option("status", None)
    policy: str | None = option("policy", None)
    api_endpoint: str | None = option("apiEndpoint", None)
    pipeline: str | None = option("pipeline", None)
    service_endpoint: str | None = option("serviceEndpoint", None)

    def mismatches(self, outcome: Outcome) -> list[str]:
        got = {
            "status": outcome.status,
            "policy": outcome.policy or "proxied",
            "apiEndpoint": outcome.api_endpoint,
            "pipeline": outcome.pipeline,
            "serviceEndpoint": outcome.service_endpoint,
        }
        wanted = {
            "status": self.status,
            "policy": self.policy,
            "apiEndpoint": self.api_endpoint,
            "pipeline": self.pipeline,
            "serviceEndpoint": self.service_endpoint,
        }
        return [f"{k} {got[k]} (expected {v})" for k, v in wanted.items() if v is not None and got[k] != v]


def _request(raw: Any, path: KeyPath) -> CaseRequest:
    return parse_fields(CaseRequest, raw, path)


def _expectation(raw: Any, path: KeyPath) -> CaseExpectation:
    return parse_fields(CaseExpectation, raw, path)


@dataclass(frozen=True)
class Case:
    request: CaseRequest = option("request", parse=_request)
    expect: CaseExpectation = option("expect", parse=_expectation)
    name: str | None = option("name", None)
    repeat: int = option("repeat", 1, parse=positive)
    """The request is sent this many times (a rate limit's count); the last must get `expect`."""

    @property
    def title(self) -> str:
        r = self.request
        return self.name or f"{r.method} {r.host}{r.path}" + (f" (token {r.token})" if r.token else "")


class _Tokens:
    """The bearer tokens cases ask for, signed with the cases file's key (RS256)."""

    def __init__(self, key_file: Path | None, claims: Mapping[str, Any], path: KeyPath) -> None:
        self.claims = dict(claims)
        self.key = None
        if key_file is not None:
            try:
                self.key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            except (OSError, ValueError, TypeError) as e:
                raise ConfigError(path, f"cannot read a private key from {key_file}: {e}") from None

    @functools.cached_property
    def _other_key(self) -> rsa.RSAPrivateKey:
        """A key nobody trusts, made when a case first asks for a forged token."""
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def make(self, kind: str, now: float, path: KeyPath) -> str:
        if kind == "malformed":
            return "not.a.token"
        claims = {**self.claims, "iat": int(now), "exp": int(now) + 600}
        if kind == "alg-none":
            return jwt.encode(claims, None, algorithm="none")
        if kind == "forged":
            return jwt.encode(claims, self._other_key, algorithm="RS256")  # type: ignore[arg-type]
        if self.key is None:
            raise ConfigError(path, f"token {kind} needs signingKey (the private key) in the cases file")
        if kind == "expired":
            claims.update(iat=int(now) - 1200, exp=int(now) - 600)
        elif kind == "not-yet-valid":
            claims["nbf"] = int(now) + 600
        return jwt.encode(claims, self.key, algorithm="RS256")  # type: ignore[arg-type]


def read_cases(file: Path) -> list[tuple[Case, http.HTTPFlow]]:
    """The cases in `file`, each with the flow that stands for its request; a ConfigError names
    the file, line and key of what is wrong."""
    document = load_document(file)
    try:
        raw = require_mapping(document.data, ROOT)
        key_file = raw.get("signingKey")
        if key_file is not None:
            key_file = file.parent / check_type(str, key_file, KeyPath("signingKey"))
        claims = require_mapping(raw.get("claims", {"sub": "whatif-case"}), KeyPath("claims"))
        tokens = _Tokens(key_file, claims, KeyPath("signingKey"))
        now = time.time()
        cases = []
        for i, entry in enumerate(require_list(raw.get("cases"), KeyPath("cases"))):
            path = KeyPath("cases").index(i)
            case = parse_fields(Case, entry, path)
            cases.append((case, _flow(case.request, tokens, now, path.key("request").key("token"))))
        unknown = set(raw) - {"signingKey", "claims", "cases"}
        if unknown:
            raise ConfigError(
                KeyPath(sorted(unknown)[0]), "is not a key of a cases file (signingKey, claims, cases)"
            )
    except ConfigError as e:
        raise e.in_file(str(file), document.where) from None
    return cases


def _flow(request: CaseRequest, tokens: _Tokens, now: float, token_path: KeyPath) -> http.HTTPFlow:
    headers = [("Host", request.host), *request.headers]
    if request.token is not None:
        headers.append(("Authorization", f"Bearer {tokens.make(request.token, now, token_path)}"))
    sent = http.Request.make(
        request.method,
        f"http://{request.host}{request.path}",
        request.body,
        http.Headers([(k.encode(), v.encode()) for k, v in headers]),
    )
    sent.timestamp_start = now
    client = connection.Client(
        peername=(request.client, 50000),
        sockname=("127.0.0.1", 8080),
        proxy_mode=mode_specs.ProxyMode.parse("reverse:http://routed-by-pipelines.invalid"),
    )
    flow = http.HTTPFlow(client, connection.Server(address=None))
    flow.request = sent
    # Shaped as the gateway records: the request as sent, an upstream that answers 200.
    flow.metadata[CLIENT_REQUEST_KEY] = _origin_form(sent).get_state()
    flow.metadata[UPSTREAM_RESPONSE_KEY] = http.Response.make(200, b"ok").get_state()
    return flow


def _origin_form(request: http.Request) -> http.Request:
    copy = request.copy()
    copy.data.authority = b""
    return copy


async def check_cases(cases: list[tuple[Case, http.HTTPFlow]], gateway: Callable[[], OfflineGateway]) -> int:
    """Each case decided by a fresh `gateway()` (its counters and caches new: cases do not
    depend on each other); prints each result, returns how many failed."""
    failed = 0
    for case, flow in cases:
        decide, recorded = gateway().decide, Recorded.of_flow(flow)
        for _ in range(case.repeat - 1):
            await decide(recorded)
        outcome = (await decide(recorded))[1]
        problems = (
            [f"indeterminate: {outcome.indeterminate}"]
            if outcome.indeterminate
            else case.expect.mismatches(outcome)
        )
        failed += bool(problems)
        print(
            f"{'FAIL' if problems else 'ok  '}  {case.title}"
            + (f": {'; '.join(problems)}" if problems else "")
        )
    print(f"whatif cases: {len(cases) - failed} passed, {failed} failed")
    return failed
