"""The ``mitmgateway`` console script: ``run`` serves a config, ``check`` validates one,
``whatif`` replays recorded traffic against one, ``consumers`` manages consumers.yml."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from .admin_api.config_sections import checked_config
from .config.errors import ConfigError
from .config.model import GatewayConfig
from .policies.key_auth import hash_api_key_secret
from .routing import ApiEndpoint

CONFIG_HELP = "the gateway's config file, in Express Gateway's format (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mitmgateway", description="An API gateway made of mitmproxy addons."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve a gateway config in a lean mitmproxy master")
    run.add_argument("-c", "--config", type=Path, default=Path("gateway.config.yml"), help=CONFIG_HELP)
    run.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (default 1; use one per core)"
    )
    run.add_argument(
        "--shadow",
        type=Path,
        metavar="CANDIDATE",
        help="a candidate config that decides every request too, without serving it (gateway_shadow)",
    )
    run.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a mitmproxy option, as with mitmdump --set",
    )
    run.add_argument(
        "--debug",
        action="store_true",
        help="keep Python's debug checks (mitmproxy then type-checks every HTTP message it builds)",
    )
    run.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    check = commands.add_parser("check", help="validate a config without serving it")
    check.add_argument("-c", "--config", type=Path, default=Path("gateway.config.yml"), help=CONFIG_HELP)
    commands.add_parser(
        "consumers",
        help="users, apps, credentials and scopes, as eg has them (mitmgateway consumers --help)",
        add_help=False,
    )
    commands.add_parser("admin-token", help="make a token for the admin API (admin.tokenHash)")
    commands.add_parser(
        "whatif",
        help="replay recorded flows against a candidate config (mitmgateway whatif --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["consumers"]:
        from . import consumers_tool

        consumers_tool.main(argv[1:])
        return 0
    if argv[:1] == ["whatif"]:
        _optimized(argv)  # a replay builds two requests and a response per flow and config
        from .whatif import cli as whatif_cli

        return whatif_cli.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "admin-token":
        token = secrets.token_urlsafe(32)
        print(f"admin API token (shown once): {token}")
        print(f"in gateway.config.yml: admin: {{tokenHash: {hash_api_key_secret(token)}}}")
        return 0
    config_path = args.config.expanduser().absolute()
    if args.command == "check":
        return check(config_path)
    if not args.debug:
        _optimized(argv)
    from . import runner  # imports mitmproxy's proxy core, which check does not need

    if args.shadow is not None:
        args.settings.append(f"gateway_shadow={args.shadow.expanduser().absolute()}")

    if args.workers < 1:
        print("mitmgateway: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers == 1:
        return runner.serve(config_path, args.settings, reuse_port=args.reuse_port)
    try:
        config = checked_config(config_path)
    except ConfigError as e:
        print(f"mitmgateway: invalid gateway config: {e}", file=sys.stderr)
        return 1
    admin = (config.admin.address, config.admin.port) if config.admin else None
    from .observe.admin import admin_api_settings
    from .pool import WorkerPool

    return WorkerPool(config_path, args.settings, args.workers, admin, admin_api_settings(config)).run()


def _optimized(argv: list[str]) -> None:
    """Go on as `python -O`: mitmproxy skips the type checks it runs, under __debug__, on every
    request and response it builds (a tenth of its time per request). Same PID."""
    if not sys.flags.optimize:
        os.execv(sys.executable, [sys.executable, "-O", "-m", "mitmgateway", *argv])


def check(config_path: Path) -> int:
    try:
        config = checked_config(config_path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(summarize(config))
    return 0


def _describe_endpoint(endpoint: ApiEndpoint) -> str:
    parts = [f"host {endpoint.host_regex.pattern!r}" if endpoint.host_regex else f"host {endpoint.host}"]
    if endpoint.paths is not None:
        parts.append("paths " + ", ".join(p.pattern for p in endpoint.paths))
    elif endpoint.path_regex is not None:
        parts.append(f"pathRegex {endpoint.path_regex.pattern!r}")
    if endpoint.methods is not None:
        parts.append("methods " + ", ".join(sorted(endpoint.methods)))
    return ", ".join(parts)


def summarize(config: GatewayConfig) -> str:
    """What a valid config sets up, on one screen: endpoints → pipelines → policies, upstreams."""
    lines = [f"{config.file}: OK"]
    for url in config.listeners:
        https = config.https if url.startswith("https:") else None
        lines.append(f"listens on {url}" + (f" (certificates: {', '.join(https.names)})" if https else ""))
    rules = config.path_rules
    lines.append(
        f"paths: mergeSlashes {str(rules.merge_slashes).lower()}, escapedSlashes {rules.escaped_slashes}, "
        f"dotSegments {rules.dot_segments}, semicolons {rules.semicolons}"
    )
    lines.append("apiEndpoints → pipeline: policies")
    for name, endpoint, pipeline in config.router.endpoints:
        steps = " → ".join(
            step.policy_name + (" (if condition)" if step.condition else "") for step in pipeline.steps
        )
        lines.append(f"  {name} ({_describe_endpoint(endpoint)}) → {pipeline.name}: {steps or 'no policies'}")
    lines.append("serviceEndpoints")
    for service in config.service_endpoints.values():
        urls = ", ".join(f"{u.scheme}://{u.authority}{u.base_path}" for u in service.upstreams)
        lines.append(f"  {service.name}: {urls}")
    return "\n".join(lines)
