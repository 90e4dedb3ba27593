"""Deciding recorded requests again, offline, with the gateway's own code: `OfflineGateway`.

Each request goes through the same `RequestGate.judge` and `ResponseSide` hooks as live traffic,
in the order mitmproxy calls them, with no socket: the upstream's answer is the recorded one. What
a step would reach beyond the request is given by `ReplayState`: a rate-limit store in memory
(started afresh, fed the requests in recorded order), the key sets of jwksUris handed to it as
documents, no delay. What cannot be worked out that way raises `Indeterminate`, and the request is
reported so, with the reason, rather than guessed.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Mapping
from pathlib import Path

from mitmproxy import http

from ..client_certificates import ClientCertificates
from ..config.assemble import load_config
from ..config.model import GatewayConfig
from ..context import Exchanges, RequestContext
from ..decision import Decision
from ..hooks.config_service import CurrentConfig
from ..hooks.gate import RequestGate
from ..hooks.response_side import ResponseSide
from ..hooks.upstream_connections import UpstreamConnections
from ..ids import ids_from
from ..introspection import Introspection, IntrospectionEndpoint
from ..jwks import KeySet, RemoteKeySet, VerificationKey
from ..observe.access_log import AccessLog
from ..outages import Outage
from ..pipeline import Step
from ..policies import StepState
from ..shared_consumers import SharedConsumers
from ..stores import Algorithm, Hit, RateLimitStore, StoreSettings
from ..stores.memory import MemoryStore
from .outcome import Outcome
from .recorded import Recorded

SHARED_COUNTS = "rate limits counted from this recording alone (the config shares them in Redis)"
INCOMPLETE = (
    "the flow was saved without the request as the client sent it (mitmweb's Save, -w): record "
    "with gateway_record"
)


class Indeterminate(Exception):
    """What a request's decision rests on cannot be worked out offline (the reason)."""


class _CountedHere(MemoryStore):
    """A Redis store's counters, kept in memory for the replay: it says when it was used."""

    def __init__(self, max_keys: int) -> None:
        super().__init__(max_keys)
        self.hits = 0

    def hit(self, key: str, window_ms: int, algorithm: Algorithm, limit: int, now: float) -> Hit:
        self.hits += 1
        return super().hit(key, window_ms, algorithm, limit, now)


class _GivenKeySet(RemoteKeySet):
    """A jwksUri's keys as handed to the replay (never fetched); without them, indeterminate."""

    def __init__(self, uri: str, keys: dict[str | None, VerificationKey] | None) -> None:
        super().__init__(uri, 0, 1)
        self.given = keys is not None
        self.keys = dict(keys or {})
        self.expires = float("inf")

    def get(self, kid: str | None) -> VerificationKey | None:
        if not self.given:
            raise Indeterminate(
                f"jwt's keys at {self.uri} are not fetched offline (give them: --jwks URI=FILE)"
            )
        return KeySet.get(self, kid)

    def fetch_for_unknown_kid(self) -> None:
        return None  # the document given is all there is


class _NotAskedOffline(IntrospectionEndpoint):
    """An authorization server's introspection endpoint: never called offline, so a token it
    would have to judge leaves the request indeterminate."""

    def remembered(self, token: str, now: float) -> Introspection | None:
        return None

    async def ask(self, token: str, now: float) -> Introspection:
        raise Indeterminate(f"oauth2-introspect's endpoint {self.url} is not called offline")


async def _no_delay() -> None:
    return None


class ReplayState(StepState):
    """Step state for a replay: in memory, handed its key sets, never waiting."""

    def __init__(self, jwks: Mapping[str, dict[str | None, VerificationKey]]) -> None:
        super().__init__()
        self.jwks = jwks
        self.shared_stores: list[_CountedHere] = []

    def open_store(self, settings: StoreSettings) -> RateLimitStore:
        if settings.type == "memory":
            return MemoryStore(settings.max_keys)
        store = _CountedHere(settings.max_keys)
        self.shared_stores.append(store)
        return store

    def remote_key_set(self, uri: str, refresh_interval: float, timeout: float) -> KeySet:
        return _GivenKeySet(uri, self.jwks.get(uri))

    def introspection_endpoint(
        self, url: str, authorization: str | None, timeout: float, ttl: float, outage: Outage
    ) -> IntrospectionEndpoint:
        return _NotAskedOffline(url, authorization, timeout, ttl, outage)

    def shared_consumers(self, settings: StoreSettings) -> SharedConsumers:
        return SharedConsumers(settings, follow=False)  # read once: a replay judges with one set

    def delay(self, seconds: float) -> Awaitable[None]:
        return _no_delay()

    @property
    def shared_hits(self) -> int:
        return sum(store.hits for store in self.shared_stores)


class _RecordedIdentity:
    """For a request recorded without its credentials, in place of each authenticating step:

    - the recording shows the same policy found no credential: the step runs (and refuses again);
    - it shows the same policy accepted one: the step accepts the identity recorded with it (see
      `Policy.accept_recorded`);
    - otherwise (another auth policy, a credential it refused or passed through): the request is
      indeterminate.
    """

    def __init__(self, recorded: Recorded) -> None:
        decision = recorded.decision or Decision()
        self.decision = decision
        self.outcomes = {policy: outcome for policy, outcome in decision.steps}
        self.removed = ", ".join(recorded.removed_credentials)
        self.used = False

    def __call__(self, ctx: RequestContext, step: Step) -> Awaitable[None] | None:
        recorded, decision = self.outcomes.get(step.policy_name), self.decision
        # What this policy found then (jwt records its own finding; key-auth and basic-auth theirs).
        found = decision.jwt_failure if step.policy_name == "jwt" else decision.auth_failure
        if recorded is not None and found == "missing":
            return step.policy.handle(ctx)
        if (
            recorded == "passed"
            and found is None
            and (decision.user is not None or decision.consumer is not None)
        ):
            self.used = True
            step.policy.accept_recorded(ctx, decision.user or {}, decision.consumer)
            return None
        raise Indeterminate(
            f"its credentials ({self.removed}) were left out of the recording, which does not say "
            f"what {step.policy_name} would make of them"
        )


class OfflineGateway:
    """One config, deciding recorded requests one after the other (in recorded order)."""

    def __init__(
        self,
        config_file: Path,
        jwks: Mapping[str, dict[str | None, VerificationKey]],
        state: ReplayState | None = None,
    ) -> None:
        """`state`: that of the gateway this one replaces (a reloaded shadow config keeps the
        counters of its unchanged steps)."""
        self.state = ReplayState(jwks) if state is None else state
        self.config: GatewayConfig = load_config(config_file, self.state)
        self.state.keep_only(set(self.config.used_state))
        current = CurrentConfig()
        current.config = self.config
        exchanges: Exchanges = weakref.WeakKeyDictionary()
        # The recorded client certificates (a replay has no TLS handshake), by recorded connection.
        self.client_certificates: ClientCertificates = weakref.WeakKeyDictionary()
        self.gate = RequestGate(current, exchanges, UpstreamConnections(), self.client_certificates)
        self.response_side = ResponseSide(exchanges, AccessLog())

    async def decide(self, recorded: Recorded, messages: bool = True) -> tuple[http.HTTPFlow, Outcome]:
        """The flow as this config would have it (its decision, its answer), and its outcome
        (`messages`: with what the upstream and the client would get, to compare with another's;
        without them, the steps skip making those, see `RequestContext.unsent`)."""
        flow = recorded.fresh_flow()
        if recorded.incomplete:
            return flow, Outcome(status=None, indeterminate=INCOMPLETE)
        identity = _RecordedIdentity(recorded) if recorded.removed_credentials else None
        if (certificate := recorded.client_certificate) is not None:
            self.client_certificates[flow.client_conn] = certificate
        shared_hits = self.state.shared_hits
        try:
            with ids_from(recorded.ids()):
                await self._run(flow, recorded, identity, unsent=not messages)
        except Indeterminate as e:
            return flow, Outcome(status=None, indeterminate=str(e))
        assumed = []
        if identity is not None and identity.used:
            assumed.append(f"identity from the recording (its {identity.removed} left out)")
        if self.state.shared_hits != shared_hits:
            assumed.append(SHARED_COUNTS)
        # (Proxied where the recording has no upstream answer, its decision having answered: the
        # outcome's status is unknown.)
        if not messages:
            status = None if flow.response is None else flow.response.status_code
            return flow, Outcome.of_parts(
                Decision.recorded(flow) or Decision(), None, status, None, tuple(assumed)
            )
        return flow, Outcome.of_flow(flow, tuple(assumed))

    async def _run(
        self, flow: http.HTTPFlow, recorded: Recorded, identity: _RecordedIdentity | None, unsent: bool
    ) -> None:
        # The hooks live traffic goes through, in mitmproxy's order; a step that fails answers
        # 500 as it does live (the request goes nowhere).
        try:
            pending = self.gate.judge(flow, self.config, identity, unsent)
            if pending is not None:
                await pending
            if self.gate.holds_for_body(flow):  # (a recorded body is there, unless it streamed)
                raise Indeterminate("a step reads the body, which streamed through and was not recorded")
        except Indeterminate:
            raise
        except Exception:
            self.gate.fail_closed(flow)
        self.gate.request(flow)  # (nothing is held for its body here: see above)
        if flow.response is None:
            flow.response = recorded.upstream_response()
            if flow.response is None:
                self.response_side.error(flow)
                return
            if not recorded.by_gateway and flow.response.status_code >= 400:
                raise Indeterminate(
                    f"it would be proxied, and the recorded {flow.response.status_code} may be the "
                    "old gateway's own answer as well as the upstream's"
                )
        self.response_side.responseheaders(flow)
        self.response_side.response(flow)
