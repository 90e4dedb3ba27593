"""Every mitmproxy internal the gateway uses (mitmgateway.mitm.INTERNALS) is where the gateway
expects it in the installed mitmproxy: an upgrade that moves one fails here, by name."""

from __future__ import annotations

import importlib

import pytest
from mitmproxy.proxy import mode_specs

from mitmgateway.mitm import INTERNALS
from mitmgateway.mitm.listener_lines import PLACEHOLDER_TARGET, reverse_mode


def resolve(spec: str) -> object:
    """``module:Name.attr`` (``Name()``: an instance made without arguments) to the object."""
    module_name, _, path = spec.partition(":")
    found: object = importlib.import_module(module_name)
    for part in path.split("."):
        found = getattr(found, part[:-2])() if part.endswith("()") else getattr(found, part)
    return found


@pytest.mark.parametrize("spec", INTERNALS)
def test_the_internal_is_where_the_gateway_expects_it(spec):
    assert resolve(spec) is not None


def test_mitmproxy_still_names_a_listener_as_the_gateway_rewrites_it():
    mode = mode_specs.ProxyMode.parse(reverse_mode("127.0.0.1", 8080))
    assert isinstance(mode, mode_specs.ReverseMode)
    assert mode.description == f"reverse proxy to {PLACEHOLDER_TARGET}"
