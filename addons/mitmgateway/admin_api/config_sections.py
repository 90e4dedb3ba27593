"""Express Gateway's ``/api-endpoints``, ``/service-endpoints``, ``/pipelines`` and ``/policies``:
gateway.config.yml read and changed an entry at a time.

A change is loaded as the gateway would load the whole file (an invalid one is a 400 naming the
file, line and key path, and the file is not touched), then written in place with its comments
kept, and served before the answer. Reads show the file's own values (``${VAR}`` references
unsubstituted), which is what a PUT writes back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ..config.assemble import SECTION_ALIASES, load_config
from ..config.editing import block, plain
from ..config.model import GatewayConfig
from ..policies import StepState
from ..shared_consumers import SharedConsumers
from ..stores import StoreSettings
from .routes import AdminError, AdminRequest, Handler, Reply
from .store import EditedFile

NAMED_SECTIONS = {
    "api-endpoints": "apiEndpoints",
    "service-endpoints": "serviceEndpoints",
    "pipelines": "pipelines",
}


class CheckingState(StepState):
    """Step state for checking a change: nothing is reached (no Redis read, no key set fetched)
    and what it holds is released at once."""

    def shared_consumers(self, settings: StoreSettings) -> SharedConsumers:
        return SharedConsumers(settings, read=False)


def checked_config(file: Path) -> GatewayConfig:
    """The config in `file`, loaded as the gateway would load it (a ConfigError if it would not),
    without serving it: nothing of it is kept running."""
    state = CheckingState()
    try:
        return load_config(file, state)
    finally:
        state.keep_only(set())


def check_gateway_config(candidate: Path) -> None:
    checked_config(candidate)


def section_key(document: CommentedMap, key: str) -> str:
    """The key the file spells a section with (Express Gateway accepts ``pipeline`` for ``pipelines``)."""
    alias = next((a for a, name in SECTION_ALIASES.items() if name == key), None)
    return alias if alias is not None and alias in document and key not in document else key


class ConfigSections:
    def __init__(self, config: EditedFile) -> None:
        self.config = config

    def routes(self) -> dict[tuple[str, str], Handler]:
        routes: dict[tuple[str, str], Handler] = {}
        for path, key in NAMED_SECTIONS.items():
            routes.update(
                {
                    ("GET", f"/{path}"): lambda r, key=key: Reply(200, self._section(key)),
                    ("GET", f"/{path}/:name"): lambda r, key=key: self._show(r, key),
                    ("PUT", f"/{path}/:name"): lambda r, key=key: self._put(r, key),
                    ("DELETE", f"/{path}/:name"): lambda r, key=key: self._delete(r, key),
                }
            )
        routes[("GET", "/policies")] = lambda r: Reply(200, self._section("policies", []))
        routes[("PUT", "/policies/:name")] = lambda r: self._policy(r, add=True)
        routes[("DELETE", "/policies/:name")] = lambda r: self._policy(r, add=False)
        return routes

    def _section(self, key: str, empty: Any = None) -> Any:
        document = self.config.read()
        return plain(document.get(section_key(document, key))) or ({} if empty is None else empty)

    def _show(self, request: AdminRequest, key: str) -> Reply:
        entry = self._section(key).get(request.params["name"])
        return Reply(404, "") if entry is None else Reply(200, entry)

    def _put(self, request: AdminRequest, key: str) -> Reply:
        if not isinstance(request.body, dict | list):
            raise AdminError(400, "the body must be a JSON object (or, for an apiEndpoint, a list of them)")
        name = request.params["name"]
        with self.config.change() as document:
            section = _section_to_change(document, key, CommentedMap)
            existed = name in section
            section[name] = block(request.body)
        return Reply(204 if existed else 201)

    def _delete(self, request: AdminRequest, key: str) -> Reply:
        with self.config.change() as document:
            section = _section_to_change(document, key, CommentedMap)
            if request.params["name"] not in section:
                raise AdminError(404, "")
            del section[request.params["name"]]
        return Reply(204)

    def _policy(self, request: AdminRequest, add: bool) -> Reply:
        name = request.params["name"]
        with self.config.change() as document:
            policies = _section_to_change(document, "policies", CommentedSeq)
            if add and name not in policies:
                policies.append(name)
            elif not add and name in policies:
                policies.remove(name)
        return Reply(200, {"status": "ok"}) if add else Reply(204)


def _section_to_change(document: CommentedMap, key: str, kind: type) -> Any:
    spelled = section_key(document, key)
    if document.get(spelled) is None:
        document[spelled] = kind()
    section = document[spelled]
    if isinstance(section, CommentedMap | CommentedSeq):
        section.fa.set_block_style()  # what is added to a flow-style section must stay readable
    return section
