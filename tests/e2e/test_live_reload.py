"""Editing gateway.config.yml or the gateway's code while a real mitmdump serves."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from conftest import one_pipeline
from harness import ROOT, wait_until
from processes import wait_for_listeners

PROXY = "- proxy: [{action: {serviceEndpoint: backend}}]"


def test_valid_edit_takes_effect_without_dropping_requests(start_gateway, upstreams):
    url = upstreams["customers"].url
    gateway = start_gateway(one_pipeline(url, PROXY, endpoint="host: '*.local'"))
    assert gateway.send("/", host="a.local").status == 200
    assert gateway.send("/", host="a.test").status == 404

    statuses: list[int | str] = []
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            try:
                statuses.append(gateway.send("/", host="a.local").status)
            except OSError as e:
                statuses.append(repr(e))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        text = gateway.config.read_text().replace("host: '*.local'", "hostRegex: '[.](local|test)$'")
        gateway.config.write_text(text)
        assert wait_until(lambda: gateway.send("/", host="a.test").status == 200)
    finally:
        stop.set()
        sender.join()
    assert statuses and set(statuses) == {200}, statuses
    assert f"config reloaded: {gateway.config} changed" in gateway.log()


def test_invalid_edits_are_refused_and_the_last_good_config_serves(start_gateway, upstreams):
    url = upstreams["customers"].url
    gateway = start_gateway(one_pipeline(url, PROXY))
    good = gateway.config.read_text()

    gateway.config.write_text(good.replace("serviceEndpoint: backend", "serviceEndpoint: nowhere"))
    assert wait_until(lambda: "config change refused" in gateway.log())
    assert (
        f"{gateway.config}:9:27: pipelines.api.policies[0].proxy[0].action.serviceEndpoint: "
        "unknown serviceEndpoint 'nowhere' (declared: backend)" in gateway.log()
    )
    assert gateway.send("/", host="x.local").status == 200

    gateway.config.write_text(good[: len(good) // 2])  # a half-written file
    assert wait_until(lambda: gateway.log().count("config change refused") == 2)
    assert gateway.send("/", host="x.local").status == 200

    gateway.config.write_text(good.replace("host: '*'", "host: only.local"))
    assert wait_until(lambda: gateway.send("/", host="x.local").status == 404)
    assert gateway.send("/", host="only.local").status == 200


def serve_a_copy(start_gateway, upstreams, tmp_path, monkeypatch, runner, workers=1):  # type: ignore[no-untyped-def]
    """A gateway running a copy of the code (which a test may break), and the copy's answers.py."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "addons", source / "addons", ignore=shutil.ignore_patterns("__pycache__"))
    # The lean runner loads the gateway.py beside the package it imports: the copy's, first on
    # the path (the checkout's own is only an editable install's .pth entry).
    monkeypatch.setenv("PYTHONPATH", str(source / "addons"))
    gateway = start_gateway(
        one_pipeline(upstreams["orders"].url, PROXY, endpoint="host: orders.local"),
        entry=source / "addons" / "gateway.py",
        runner=runner,
        workers=workers,
    )
    # Every worker has loaded the code before a test breaks it (each listens once it has).
    wait_for_listeners(gateway.port, workers, gateway.process)
    return gateway, source / "addons" / "mitmgateway" / "answers.py"


@pytest.mark.parametrize("runner", ["mitmdump", "mitmgateway"])
def test_editing_a_package_module_reloads_the_code(start_gateway, upstreams, tmp_path, monkeypatch, runner):
    gateway, answers = serve_a_copy(start_gateway, upstreams, tmp_path, monkeypatch, runner)
    assert gateway.send("/", host="nowhere.local").text == "Not Found"

    answers.write_text(answers.read_text().replace('NOT_FOUND = "Not Found"', 'NOT_FOUND = "No such API"'))
    assert wait_until(lambda: gateway.send("/", host="nowhere.local").text == "No such API", timeout=10)
    assert gateway.send("/", host="orders.local").status == 200
    assert "gateway code changed, reloading" in gateway.log()


@pytest.mark.parametrize("runner,workers", [("mitmdump", 1), ("mitmgateway", 1), ("mitmgateway", 2)])
def test_code_that_does_not_import_is_not_loaded_and_the_next_good_save_is(
    start_gateway, upstreams, tmp_path, monkeypatch, runner, workers
):
    gateway, answers = serve_a_copy(start_gateway, upstreams, tmp_path, monkeypatch, runner, workers)
    good = answers.read_text()
    answers.write_text(good + "\ndef broken(:\n")
    line = len(good.splitlines()) + 2
    assert wait_until(lambda: "gateway code change not loaded" in gateway.log(), timeout=20), gateway.log()
    log = gateway.log()
    assert f"the previous code still serves: {answers}, line {line}: SyntaxError: invalid syntax" in log
    # Served throughout by the previous code, and still watched: the fix is picked up.
    for _ in range(5):
        assert gateway.send("/", host="orders.local").status == 200
        assert gateway.send("/", host="nowhere.local").text == "Not Found"
    answers.write_text(good.replace('NOT_FOUND = "Not Found"', 'NOT_FOUND = "No such API"'))
    assert wait_until(lambda: gateway.send("/", host="nowhere.local").text == "No such API", timeout=20)
    assert gateway.send("/", host="orders.local").status == 200
    # At most once per process (one may see the fix before its trial of the broken save ends).
    assert 1 <= gateway.log().count(f"{answers}, line {line}: SyntaxError") <= workers


def test_an_edit_that_adds_a_watched_file_reloads_once(start_gateway, upstreams, tmp_path):
    gateway = start_gateway(one_pipeline(upstreams["customers"].url, PROXY))
    (tmp_path / "partners.yml").write_text("consumers: {}\n")
    gateway.config.write_text(gateway.config.read_text() + "consumers: partners.yml\n")
    assert wait_until(lambda: "config reloaded: " in gateway.log())
    time.sleep(1)  # five more polls, each seeing the config's files as they were loaded
    assert gateway.log().count("config reloaded: ") == 1
