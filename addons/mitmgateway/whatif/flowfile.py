"""Flow files (mitmproxy's format: one tnetstring per flow) read for a replay: each HTTP flow's
state, holding only the parts a replay reads.

Reading is most of a replay's time. mitmproxy.io.tnetstring parses all of a flow's three hundred
values, a memoryview slice and three calls each; a third of them are connection details a replay
never reads. This reads the same format from one bytes object, steps over what a replay does not
read without parsing it, and leaves a flow of another format version to mitmproxy's own parser and
migration, whole.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

from mitmproxy import version
from mitmproxy.io import compat, tnetstring


class UnreadablePart(ValueError):
    """A deferred part of a recorded flow, malformed: found when a replay reads it (its message
    names the file and the byte)."""


class Deferred:
    """A value left unparsed until it is asked for (its bytes copied out: it is sent between
    processes as they are), and where it lies in its file."""

    __slots__ = ("offset", "raw", "source")

    def __init__(self, raw: bytes, source: str, offset: int) -> None:
        self.raw = raw
        self.source = source
        self.offset = offset

    def value(self) -> Any:
        try:
            return _parser(self.raw, self.offset)(0, None)[0]
        except UnicodeDecodeError as e:  # (a text value's bytes: a ValueError that says neither)
            raise UnreadablePart(f"{self.source}: {_malformed(self.offset, e)}") from None
        except ValueError as e:  # (it says what, and where)
            raise UnreadablePart(f"{self.source}: {e}") from None
        except (IndexError, RecursionError) as e:
            raise UnreadablePart(f"{self.source}: {_malformed(self.offset, e)}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Deferred) and (other.raw, other.offset) == (self.raw, self.offset)

    __hash__ = None  # type: ignore[assignment]


DEFER = "defer"
Wanted = dict[str, "Wanted | str | None"]
"""The keys of a dict to parse, each with what to parse of its value (None: all of it; DEFER:
none of it yet, a Deferred)."""

REPLAYED: Wanted = {
    "type": None,
    "version": None,
    "id": None,
    # A baseline config decides without them where the gateway recorded the flow (it kept the
    # client's request and the upstream's answer): the recorded request and response are read
    # for the recorded decision's outcome only.
    "request": DEFER,
    "response": DEFER,
    "metadata": None,
    "client_conn": dict.fromkeys(
        ("peername", "sockname", "timestamp_start", "proxy_mode", "tls", "sni", "alpn")
    ),
}
"""What a replay reads of a flow (whatif/recorded.py): no server connection, no websocket
messages, no certificates; the request and response when it needs them."""

_TAGS = frozenset(b",;#^!~]}")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The collector off for a while. Parsing builds hundreds of containers per flow, all kept:
    its passes over them would cost a fifth of the time, and find nothing to free."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def flow_starts(data: bytes, offset: int = 0) -> list[int]:
    """Where each flow of a flow file (from `offset` on) starts in `data` (its length, a colon,
    its data, a type tag), found without parsing them."""
    starts, pos = [], 0
    while pos < len(data):
        colon = data.find(b":", pos, pos + 13)
        if colon < 0 or not data[pos:colon].isdigit():
            raise ValueError(f"not a flow file: no length prefix at byte {offset + pos}")
        starts.append(pos)
        pos = colon + 1 + int(data[pos:colon]) + 1
        if pos > len(data):
            raise ValueError(
                f"not a flow file, or cut short: the flow at byte {offset + starts[-1]} ends past it"
            )
    return starts


def http_states(data: bytes, source: str, offset: int = 0) -> list[dict[str, Any]]:
    """The states of the HTTP flows in `data` (the bytes of the file `source` from `offset` on),
    each with what a replay reads, in this mitmproxy's format version."""
    states = []
    value = _parser(data, offset, source)
    with gc_paused():
        for start in flow_starts(data, offset):
            state = _state(value, data, start, offset)
            if state.get("type") == "http":
                states.append(state)
    return states


def _malformed(at: int, error: Exception) -> str:
    return f"not a flow file: the value at byte {at} is malformed ({error})"


def _state(value: Parse, data: bytes, start: int, offset: int) -> dict[str, Any]:
    try:
        state, end = value(start, REPLAYED)
        if isinstance(state, dict) and state.get("version") != version.FLOW_FORMAT_VERSION:
            # Another version's keys may differ (or be bytes): mitmproxy migrates the whole flow.
            state = compat.migrate_flow(tnetstring.loads(data[start:end]))  # type: ignore[arg-type]
    except (IndexError, RecursionError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(_malformed(offset + start, e)) from None
    if not isinstance(state, dict):
        raise ValueError(f"not a flow file: the value at byte {offset + start} is not a flow")
    return state


Parse = Callable[[int, "Wanted | None"], tuple[Any, int]]


def _parser(data: bytes, offset: int, source: str = "") -> Parse:
    """A parser of the tnetstrings in `data` (the bytes of the file `source` from `offset` on):
    given where one starts (and, for a dict, what of it is wanted), its value and where the next
    starts. A closure: its names are locals, which is a fifth of its speed."""
    find = data.find

    def bad(pos: int, why: str) -> ValueError:
        return ValueError(f"not a flow file: {why} at byte {offset + pos}")

    def skip(pos: int) -> int:
        """Where the value after the one at `pos` starts."""
        colon = find(b":", pos, pos + 13)
        length = data[pos:colon]
        if colon < 0 or not length.isdigit() or data[colon + 1 + int(length)] not in _TAGS:
            raise bad(pos, "no value")
        return colon + 2 + int(length)

    def value(pos: int, wanted: Wanted | None = None) -> tuple[Any, int]:
        colon = find(b":", pos, pos + 13)
        length = data[pos:colon]
        if colon < 0 or not length.isdigit():
            raise bad(pos, "no length prefix")
        start = colon + 1
        end = start + int(length)
        tag = data[end]  # the commonest first
        if tag == 44:  # ,
            return data[start:end], end + 1
        if tag == 59:  # ;
            return data[start:end].decode(), end + 1
        if tag == 93:  # ]
            elements = []
            p = start
            while p < end:
                element, p = value(p)
                elements.append(element)
            if p != end:
                raise bad(end, "a value overrunning its list")
            return elements, end + 1
        if tag == 125:  # }
            items: dict[Any, Any] = {}
            p = start
            while p < end:
                key, p = value(p)
                if wanted is None:
                    items[key], p = value(p)
                elif key in wanted:
                    want = wanted[key]
                    if want is DEFER:
                        end_of_value = skip(p)
                        items[key] = Deferred(data[p:end_of_value], source, offset + p)
                        p = end_of_value
                    else:
                        items[key], p = value(p, want)  # type: ignore[arg-type]
                else:
                    p = skip(p)
            if p != end:
                raise bad(end, "a value overrunning its dict")
            return items, end + 1
        if tag == 35:  # #
            return int(data[start:end]), end + 1
        if tag == 94:  # ^
            return float(data[start:end]), end + 1
        if tag == 126 and start == end:  # ~
            return None, end + 1
        if tag == 33 and data[start:end] in (b"true", b"false"):  # !
            return data[start:end] == b"true", end + 1
        raise bad(pos, "a bad value")

    return value
