"""What a policy is, how it registers itself, and what it is given when a config is built."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..config.errors import KeyPath
from ..context import claimed_scopes
from ..credentials import CredentialType, register_credential_type
from ..introspection import IntrospectionEndpoint
from ..jwks import KeySet, RemoteKeySet
from ..outages import Outage
from ..stores import RateLimitStore, StoreSettings, open_store

if TYPE_CHECKING:
    from ..consumers import ConsumerDirectory
    from ..context import RequestContext
    from ..shared_consumers import SharedConsumers
    from ..upstreams.endpoints import ServiceEndpoint

S = TypeVar("S")


class StepState:
    """Long-lived state (rate-limit counters...) that outlives a config reload.

    A policy asks for its state under a key naming the step and the settings the state depends
    on; an unchanged step of a reloaded config gets the same object back, and state nobody asked
    for in the new config is dropped when it is swapped in.
    """

    def __init__(self) -> None:
        self._items: dict[Any, Any] = {}

    def get(self, key: Any, create: Callable[[], S], used: set[Any]) -> S:
        used.add(key)
        if key not in self._items:
            self._items[key] = create()
        return self._items[key]

    # What a step reaches beyond the request. A replay (whatif/) judges recorded requests offline
    # with a state that gives a store in memory, the key sets it was handed, no introspection
    # and no waiting.

    def open_store(self, settings: StoreSettings) -> RateLimitStore:
        return open_store(settings)

    def remote_key_set(self, uri: str, refresh_interval: float, timeout: float) -> KeySet:
        return RemoteKeySet(uri, refresh_interval, timeout)

    def introspection_endpoint(
        self, url: str, authorization: str | None, timeout: float, ttl: float, outage: Outage
    ) -> IntrospectionEndpoint:
        return IntrospectionEndpoint(url, authorization, timeout, ttl, outage)

    def shared_consumers(self, settings: StoreSettings) -> SharedConsumers:
        from ..shared_consumers import SharedConsumers  # the sync redis client, when used

        return SharedConsumers(settings)

    def delay(self, seconds: float) -> Awaitable[None]:
        """What a step awaits to hold a request back (a rate limit's delayMs)."""
        return asyncio.sleep(seconds)

    def keep_only(self, used: set[Any]) -> None:
        """Drop what `used` does not name; what holds resources (a Redis client) has close()."""
        kept = {k: v for k, v in self._items.items() if k in used}
        for key, value in self._items.items():
            if key not in kept and callable(close := getattr(value, "close", None)):
                close()
        self._items = kept


@dataclass
class BuildContext:
    """What a policy may consult while it is built from its action, at config load."""

    path: KeyPath
    """Key path of the step's action, for errors."""
    step_id: str
    """``pipeline/policy index/step index``: identifies the step across reloads."""
    config_dir: Path
    service_endpoints: Mapping[str, ServiceEndpoint]
    rate_limit_store: RateLimitStore
    consumers: ConsumerDirectory
    state: StepState
    used_state: set[Any] = field(default_factory=set)
    reporting: bool = False
    """The step is in ``mode: report``: what it does to traffic beyond answering (a delay,
    headers telling clients of a limit) it leaves out, since it enforces nothing."""

    def step_state(self, settings: Any, create: Callable[[], S]) -> S:
        return self.state.get((self.step_id, settings), create, self.used_state)


class Policy(ABC):
    """One configured step of a pipeline: built once from its action, then run per request."""

    name: ClassVar[str]
    Action: ClassVar[type]
    """Frozen dataclass of the action's parameters, read with `config.schema.parse_fields`."""
    identity_headers: tuple[str, ...] = ()
    """Request headers this step sets to say who the client is: never taken from the client."""
    authenticates: ClassVar[bool] = False
    """Whether the step proves who the client is (a cache step may not come before it)."""
    credential: ClassVar[CredentialType | None] = None
    """The consumer credential this policy checks, which the consumers file may then hold."""

    @abstractmethod
    def __init__(self, action: Any, build: BuildContext) -> None:
        """Validate cross-references and prepare everything the request path needs."""

    @abstractmethod
    def handle(self, ctx: RequestContext) -> Awaitable[None] | None:
        """Let the request go on (maybe changed) or answer it with ``ctx.answer(...)``.

        A policy that must wait (I/O) returns an awaitable and decides when it completes; the
        pipeline awaits it before the next step. Returning None keeps the request path
        synchronous, which is what most policies should do.
        """

    def accept_recorded(self, ctx: RequestContext, user: Mapping[str, Any], consumer: str | None) -> None:
        """Let the request go on as `user` (and `consumer`), proven when it was recorded: what a
        replay of a request recorded without its credentials does in place of `handle`
        (whatif/). By default the identity is taken as it was, its scopes checked against the
        apiEndpoint's; a step that does more once it accepts a credential says so here."""
        ctx.user = user
        if consumer is None:
            return  # without a consumer, the gate's rule for scoped endpoints applies
        ctx.decision.consumer = consumer
        ctx.require_scopes(claimed_scopes(user))


POLICIES: dict[str, type[Policy]] = {}

P = TypeVar("P", bound=type[Policy])


def register_policy(cls: P) -> P:
    """Make a policy usable by its name in gateway.config.yml (a plugin does the same), and its
    credential type usable in the consumers file."""
    POLICIES[cls.name] = cls
    if cls.credential is not None:
        register_credential_type(cls.credential)
    return cls
