"""Hand-written what-if cases (mitmgateway whatif --cases): requests and the decision each must
get, checked offline against a config, with tokens signed at test time."""

from __future__ import annotations

from pathlib import Path

from mitmgateway.whatif import cli as whatif
from processes import walkthrough_config

CASES = """\
signingKey: {private_key}
claims: {{sub: demo-user}}
cases:
  - name: customers need a token
    request: {{host: customers.local, path: /customers/1, client: 203.0.113.7}}
    expect: {{status: 401, policy: jwt, apiEndpoint: customers, pipeline: customers}}
  - request: {{host: orders.local, path: /orders/1, token: valid}}
    expect: {{status: 200, policy: proxied, serviceEndpoint: orders}}
  - request: {{host: orders.local, token: expired}}
    expect: {{status: 401, policy: jwt}}
  - request: {{host: orders.local, token: not-yet-valid}}
    expect: {{status: 401, policy: jwt}}
  - request: {{host: orders.local, token: forged}}
    expect: {{status: 401}}
  - request: {{host: orders.local, token: alg-none}}
    expect: {{status: 401}}
  - request: {{host: orders.local, token: malformed}}
    expect: {{status: 401}}
  - name: the limit answers the fourth request in a window
    repeat: 4
    request: {{host: orders.local, token: valid}}
    expect: {{status: 429, policy: rate-limit}}
  - request: {{method: POST, host: nowhere.local, path: /x, headers: {{Content-Type: text/plain}}, body: hi}}
    expect: {{status: 404, policy: no apiEndpoint}}
"""


def _files(tmp_path: Path, rsa_keys: tuple[Path, Path], cases: str = CASES) -> tuple[Path, Path]:
    config = tmp_path / "gateway.config.yml"
    config.write_text(walkthrough_config(8080, "http://127.0.0.1:9", "http://127.0.0.1:9", rsa_keys[1], 3))
    cases_file = tmp_path / "cases.yml"
    cases_file.write_text(cases.format(private_key=rsa_keys[0]))
    return config, cases_file


def test_every_case_gets_its_decision(tmp_path, rsa_keys, capsys):
    config, cases = _files(tmp_path, rsa_keys)
    status = whatif.main(["-c", str(config), "--cases", str(cases)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "ok    customers need a token" in out
    assert "ok    GET orders.local/ (token expired)" in out
    assert out.rstrip().endswith("whatif cases: 9 passed, 0 failed")


def test_a_case_the_config_breaks_fails_with_what_it_got(tmp_path, rsa_keys, capsys):
    config, cases = _files(tmp_path, rsa_keys)
    config.write_text(config.read_text().replace("serviceEndpoint: orders,", "serviceEndpoint: customers,"))
    status = whatif.main(["-c", str(config), "--cases", str(cases)])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL  GET orders.local/orders/1 (token valid): serviceEndpoint customers (expected orders)" in out
    assert "whatif cases: 8 passed, 1 failed" in out


def test_a_wrong_cases_file_is_refused_with_its_place(tmp_path, rsa_keys, capsys):
    config, cases = _files(tmp_path, rsa_keys, CASES.replace("token: expired", "token: stale"))
    status = whatif.main(["-c", str(config), "--cases", str(cases)])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{cases}:9:" in err and "cases[2].request.token" in err and "'stale'" in err


def test_a_signed_token_needs_the_signing_key(tmp_path, rsa_keys, capsys):
    config, cases = _files(tmp_path, rsa_keys, CASES.replace("signingKey: {private_key}\n", ""))
    assert whatif.main(["-c", str(config), "--cases", str(cases)]) == 2
    assert "cases[1].request.token: token valid needs signingKey" in capsys.readouterr().err
