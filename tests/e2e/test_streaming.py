"""A large body streams through a running gateway, byte for byte."""

from __future__ import annotations

import json

from conftest import every_policy_pipeline as config


def test_a_large_body_streams_through_intact(start_gateway, upstreams):
    gateway = start_gateway(
        config(upstreams["orders"].url, "- proxy: [{action: {serviceEndpoint: backend}}]")
    )
    body = bytes(range(256)) * (12 << 10)  # 3 MiB
    reply = gateway.send("/upload", method="POST", body=body)
    assert reply.status == 200 and json.loads(reply.body)["bodyLength"] == len(body)
