"""The cache policy through a running gateway: repeats served, nothing kept across clients."""

from __future__ import annotations

import json
import time

from conftest import every_policy_pipeline as config


def test_cache_serves_repeats_within_the_ttl_and_never_across_clients(start_gateway, tmp_path):
    from harness import Upstream

    upstream = Upstream("slow-service")  # its own counter of requests served
    try:
        steps = "- cache: [{action: {ttl: 1}}]\n- proxy: [{action: {serviceEndpoint: backend}}]"
        gateway = start_gateway(config(upstream.url, steps))

        def served(path: str, **headers: str) -> tuple[int, str, str | None]:
            reply = gateway.send(path, headers=headers)
            return json.loads(reply.body)["served"], reply.headers["X-Cache"], reply.headers.get("Age")

        first = served("/items?page=1")
        assert first[1] == "MISS"
        assert [served("/items?page=1") for _ in range(4)] == [(first[0], "HIT", "0")] * 4
        assert served("/items?page=2")[0] == first[0] + 1, "another query is another entry"
        time.sleep(1.1)
        assert served("/items?page=1")[1] == "MISS", "not past the TTL"

        stored_once = served("/never?cacheControl=no-store")[0]
        assert served("/never?cacheControl=no-store")[0] == stored_once + 1
        with_cookie = served("/cookie?setCookie=a%3Db")[0]
        assert served("/cookie?setCookie=a%3Db")[0] == with_cookie + 1, "a Set-Cookie answer is not kept"
        stored = served("/max?cacheControl=max-age%3D60")
        assert stored[1] == "MISS"
        assert served("/max?cacheControl=max-age%3D60")[:2] == (stored[0], "HIT")

        # Authorized requests neither read nor fill the shared cache: the upstream answers this
        # one itself, as the very next request it serves.
        mine = gateway.send("/max?cacheControl=max-age%3D60", headers={"Authorization": "Bearer alice"})
        assert "X-Cache" not in mine.headers and json.loads(mine.body)["served"] == stored[0] + 1

        english = served("/lang?vary=Accept-Language", **{"Accept-Language": "en"})
        assert served("/lang?vary=Accept-Language", **{"Accept-Language": "en"})[1] == "HIT"
        assert served("/lang?vary=Accept-Language", **{"Accept-Language": "fr"})[0] == english[0] + 1
    finally:
        upstream.stop()


def test_cache_never_keeps_identified_or_unkeyed_requests(start_gateway, tmp_path):
    from consumers_fixture import write_consumers
    from harness import Upstream

    write_consumers(tmp_path)
    upstream = Upstream("personal")
    try:
        steps = (
            "- key-auth:\n"
            "    - {condition: {name: expression, expression: req.headers.authorization}, action: {}}\n"
            "- cache: [{action: {ttl: 60}}]\n- proxy: [{action: {serviceEndpoint: backend}}]"
        )
        gateway = start_gateway(config(upstream.url, steps))
        key = {"Authorization": "apiKey k1:topsecret"}
        first = json.loads(gateway.send("/me", headers=key).body)["served"]
        assert json.loads(gateway.send("/me", headers=key).body)["served"] == first + 1
        anonymous = gateway.send("/me")
        assert anonymous.headers["X-Cache"] == "MISS"
        poisoned = gateway.send("/me", headers={"X-Forwarded-Host": "evil.example"})
        assert "X-Cache" not in poisoned.headers
        assert gateway.send("/me").headers["X-Cache"] == "HIT"
    finally:
        upstream.stop()
