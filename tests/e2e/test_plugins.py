"""A plugin named in the config, loaded and serving."""

from __future__ import annotations

import json
import shutil

from conftest import one_pipeline
from harness import ROOT


def test_the_example_plugin_is_loaded_from_the_config(start_gateway, upstreams, tmp_path):
    shutil.copy(ROOT / "examples" / "plugins" / "acme_policies.py", tmp_path / "acme_policies.py")
    steps = """\
- acme-tenant:
    - condition: {name: acme-header, header: X-Beta, value: "1"}
      action: {tenants: [blue, green]}
- proxy: [{action: {serviceEndpoint: backend}}]"""
    config = one_pipeline(upstreams["customers"].url, steps).replace(
        "policies: [jwt, proxy, rate-limit, key-auth, basic-auth]",
        "plugins: [acme_policies]\npolicies: [acme-tenant, proxy]",
    )
    gateway = start_gateway(config)
    assert gateway.send(headers={"X-Beta": "1", "X-Tenant": "red"}).status == 403
    ok = gateway.send(headers={"X-Beta": "1", "X-Tenant": "blue", "X-Acme-Tenant": "spoof"})
    assert ok.status == 200
    seen = {k.lower(): v for k, v in json.loads(ok.body)["headers"].items()}
    assert seen["x-acme-tenant"] == "blue"
    skipped = gateway.send(headers={"X-Acme-Tenant": "spoof"})  # condition false: step skipped
    assert "x-acme-tenant" not in {k.lower() for k in json.loads(skipped.body)["headers"]}
