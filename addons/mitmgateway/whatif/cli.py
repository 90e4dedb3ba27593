"""``mitmgateway whatif``: recorded traffic (or hand-written cases) decided again under a
candidate config, and every request whose decision would change listed.

Exit status: 0 when nothing changed (or only what ``--expect`` allows), 1 when something did or
could not be worked out offline (indeterminate), 2 when the replay could not run (a bad config, an
unreadable file, a report it cannot write).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config.errors import ConfigError
from ..jwks import VerificationKey, parse_jwks
from .cases import check_cases, read_cases
from .flowfile import UnreadablePart, gc_paused
from .forked import ForkFailed
from .offline import OfflineGateway
from .recorded import UnreadableFlows, read_flows
from .replay import replay
from .report import Expectations, Progress, Report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mitmgateway whatif",
        description="Replay recorded flows against a candidate config and list every request "
        "whose decision would change.",
    )
    parser.add_argument("flows", nargs="*", type=Path, help="flow files (gateway_record, mitmdump -w)")
    parser.add_argument(
        "-c",
        "--config",
        "--candidate",
        dest="candidate",
        type=Path,
        required=True,
        help="the candidate gateway.config.yml",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="decide 'before' under this config (default: "
        "the decision recorded with each flow; for plain mitmproxy flows, their status)",
    )
    parser.add_argument(
        "--cases",
        type=Path,
        action="append",
        default=[],
        help="a YAML file of hand-written requests and the decision each must get",
    )
    parser.add_argument("--json", type=Path, help="write the changed requests, as JSON, to this file")
    parser.add_argument("--changed", type=Path, help="write the changed flows to this flow file")
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="TRANSITION",
        help="a transition allowed to happen, e.g. 'orders: proxied 200 -> 401 by jwt' "
        "(* matches anything); repeatable",
    )
    parser.add_argument(
        "--jwks",
        action="append",
        default=[],
        metavar="URI=FILE",
        help="the JWKS document a jwksUri serves (it is never fetched); repeatable",
    )
    return parser


def _key_sets(given: list[str]) -> dict[str, dict[str | None, VerificationKey]]:
    key_sets = {}
    for item in given:
        uri, sep, file = item.partition("=")
        if not sep:
            raise ValueError(f"--jwks {item!r}: give URI=FILE")
        try:
            key_sets[uri] = parse_jwks(json.loads(Path(file).read_bytes()))
        except (OSError, ValueError) as e:
            raise ValueError(f"--jwks {file}: {e}") from None
    return key_sets


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.flows and not args.cases:
        print("mitmgateway whatif: give flow files to replay, or --cases FILE", file=sys.stderr)
        return 2
    try:
        key_sets = _key_sets(args.jwks)
        candidate = OfflineGateway(args.candidate, key_sets)
        baseline = OfflineGateway(args.baseline, key_sets) if args.baseline else None
        with gc_paused():
            flows = read_flows(args.flows)
            # Kept to the end: the collector's passes leave them out from now on (and a forked
            # baseline shares their memory pages), its first among them.
            gc.freeze()
        cases = [case for file in args.cases for case in read_cases(file)]
    except (ConfigError, UnreadableFlows, ValueError) as e:
        print(f"mitmgateway whatif: {e}", file=sys.stderr)
        return 2
    expectations = Expectations(args.expect)
    status = 0
    if flows:
        try:
            report = Report(
                replay(flows, candidate, baseline, Progress(len(flows))), args.candidate, args.baseline
            )
        except (ForkFailed, UnreadablePart) as e:  # (a recorded response found malformed)
            print(f"mitmgateway whatif: {e}", file=sys.stderr)
            return 2
        print(report.summary(expectations))
        try:
            if args.json:
                report.write_json(args.json)
            if args.changed:
                report.write_changed(args.changed)
        except OSError as e:
            print(f"mitmgateway whatif: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
            return 2
        status = 1 if report.unexpected(expectations) else 0
    if cases:
        failed = asyncio.run(check_cases(cases, lambda: OfflineGateway(args.candidate, key_sets)))
        status = max(status, 1 if failed else 0)
    return status
