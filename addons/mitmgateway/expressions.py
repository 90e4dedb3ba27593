"""A small, safe expression language for what Express Gateway runs as JavaScript.

EG evaluates conditions, header values, transformer values and the ``expression`` policy's
``jscode`` as JavaScript against its request context. We accept the forms EG configs write there,
parsed once at config load into a tree of small Python closures; nothing is ever passed to
``eval``/``exec``. The grammar:

- literals: ``'text'``, ``"text"``, numbers, ``true``/``false``/``null`` (``True``/``False``/``None``)
- names: ``req`` (``method``, ``url``, ``path``, ``originalUrl``, ``headers``, ``query``, ``ip``,
  ``hostname``, ``protocol``), ``user`` and ``consumer`` (the verified claims or consumer),
  ``requestID``, ``apiEndpoint`` (``name``)
- ``a.b``, ``a['b']``: a missing member is ``null``, never an error
- ``==``/``===``, ``!=``/``!==``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``
- ``and``/``&&``, ``or``/``||``, ``not``/``!``, ``+`` (adds numbers, joins text), parentheses
- in ``jscode`` only, assignments, one per line or separated by ``;``:
  ``req.url = '/new'``, ``req.headers['x-a'] = user.sub`` (``null`` removes the header)

Anything else (calls, lambdas, comprehensions, other operators) is a config error naming what
could not be parsed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .config.errors import ConfigError, KeyPath
from .headers import is_header_name, single_line
from .paths import PathRules, Refusal, canonical_target

if TYPE_CHECKING:
    from .context import RequestContext

Evaluator = Callable[["RequestContext"], Any]
Assignment = Callable[["RequestContext"], None]

_STRING = re.compile(r"""('(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*")""")
# JavaScript spellings, rewritten outside string literals before Python's parser reads the text.
_JS_OPERATORS = [
    (re.compile(r"==="), "=="),
    (re.compile(r"!=="), "!="),
    (re.compile(r"&&"), " and "),
    (re.compile(r"\|\|"), " or "),
    (re.compile(r"!(?!=)"), " not "),
    (re.compile(r"\btrue\b"), "True"),
    (re.compile(r"\bfalse\b"), "False"),
    (re.compile(r"\b(?:null|undefined)\b"), "None"),
]


def _in(item: Any, container: Any) -> bool:
    # Membership of a list or mapping (or a header set); a text "contains" is not what EG means.
    if isinstance(container, list | tuple | Mapping | _Headers):
        try:
            return item in container
        except TypeError:  # an unhashable item
            return False
    return False


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def safe(a: Any, b: Any) -> bool:
        try:
            return a is not None and b is not None and compare(a, b)
        except TypeError:  # text against a number, say: false, as no request should make a 500
            return False

    return safe


_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: _ordered(lambda a, b: a < b),
    ast.LtE: _ordered(lambda a, b: a <= b),
    ast.Gt: _ordered(lambda a, b: a > b),
    ast.GtE: _ordered(lambda a, b: a >= b),
    ast.In: _in,
    ast.NotIn: lambda a, b: not _in(a, b),
}
_PRIMITIVE = str | int | float | bool | type(None)
_ASSIGNED_URL_RULES = PathRules()


class _Headers:
    def __init__(self, headers: Any) -> None:
        self.headers = headers

    def member(self, name: str) -> Any:
        return self.headers.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.headers


REQUEST_MEMBERS: dict[str, Evaluator] = {
    "method": lambda ctx: ctx.flow.request.method,
    "url": lambda ctx: ctx.flow.request.path,
    "path": lambda ctx: ctx.flow.request.path.partition("?")[0],
    "originalUrl": lambda ctx: ctx.decision.path or ctx.flow.request.path,
    "headers": lambda ctx: _Headers(ctx.flow.request.headers),
    "query": lambda ctx: dict(ctx.flow.request.query),
    "ip": lambda ctx: ctx.client_ip,
    "hostname": lambda ctx: ctx.hostname,
    "protocol": lambda ctx: "https" if ctx.flow.client_conn.tls else "http",
    # Node's req.client: whether the TLS client certificate was verified, and its subject.
    "client": lambda ctx: (
        ctx.client_certificate.as_request_member() if ctx.client_certificate else {"authorized": False}
    ),
}
"""``req.NAME`` as expressions and templates see it (read-only; jscode assigns through
`_Compiler.assignment`)."""


class _Request:
    """``req`` itself, for a member named at run time (``req[name]``)."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx

    def member(self, name: str) -> Any:
        getter = REQUEST_MEMBERS.get(name)
        return getter(self.ctx) if getter is not None else None


def _member(value: Any, name: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, _Request | _Headers):
        return value.member(str(name))
    if isinstance(value, Mapping):
        try:
            return value.get(name)
        except TypeError:  # an unhashable key
            return None
    if isinstance(value, list | tuple | str) and isinstance(name, int):
        return value[name] if -len(value) <= name < len(value) else None
    return None


_NAMES: dict[str, Evaluator] = {
    "req": _Request,
    "user": lambda ctx: ctx.user,
    "consumer": lambda ctx: ctx.user,
    "requestID": lambda ctx: ctx.flow.request.headers.get("X-Request-Id") or ctx.decision.request_id,
    "apiEndpoint": lambda ctx: {"name": ctx.route.api_endpoint_name},
}


def _add(a: Any, b: Any) -> Any:
    if not isinstance(a, _PRIMITIVE) or not isinstance(b, _PRIMITIVE):
        return None
    if isinstance(a, str) or isinstance(b, str):
        return f"{'' if a is None else a}{'' if b is None else b}"
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    return None


class _Compiler:
    def __init__(self, path: KeyPath, source: str) -> None:
        self.path = path
        self.source = source

    def refuse(self, what: str) -> ConfigError:
        return ConfigError(self.path, f"cannot use {what} in an expression: {self.source!r}")

    def expression(self, node: ast.AST) -> Evaluator:
        if isinstance(node, ast.Constant):
            value = node.value
            if not isinstance(value, _PRIMITIVE):
                raise self.refuse(type(value).__name__)
            return lambda _ctx: value
        if isinstance(node, ast.Name):
            resolve = _NAMES.get(node.id)
            if resolve is None:
                raise ConfigError(
                    self.path, f"unknown name {node.id!r} in {self.source!r} (known: {', '.join(_NAMES)})"
                )
            return resolve
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "req":
            # Resolved now: a misspelt member is a config error, not a silent null per request.
            member = REQUEST_MEMBERS.get(node.attr)
            if member is None:
                known = ", ".join(REQUEST_MEMBERS)
                raise ConfigError(
                    self.path, f"unknown member req.{node.attr} in {self.source!r} (known: {known})"
                )
            return member
        if isinstance(node, ast.Attribute):
            base, attr = self.expression(node.value), node.attr
            return lambda ctx: _member(base(ctx), attr)
        if isinstance(node, ast.Subscript):
            base, key = self.expression(node.value), self.expression(node.slice)
            return lambda ctx: _member(base(ctx), key(ctx))
        if isinstance(node, ast.BoolOp):
            parts = [self.expression(v) for v in node.values]
            stop_when = not isinstance(node.op, ast.And)  # "or" stops at a truthy operand

            def boolean(ctx: RequestContext) -> Any:
                # As JavaScript: the operand that decided, so `a || 'default'` is a value.
                value = None
                for part in parts:
                    value = part(ctx)
                    if bool(value) is stop_when:
                        return value
                return value

            return boolean
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            operand = self.expression(node.operand)
            return lambda ctx: not operand(ctx)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self.expression(node.operand)
            return lambda ctx: -v if isinstance(v := operand(ctx), int | float) else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.expression(node.left), self.expression(node.right)
            return lambda ctx: _add(left(ctx), right(ctx))
        if isinstance(node, ast.Compare):
            first = self.expression(node.left)
            ops = [_COMPARE[type(op)] for op in node.ops if type(op) in _COMPARE]
            if len(ops) != len(node.ops):
                raise self.refuse("that comparison")
            rest = [self.expression(c) for c in node.comparators]

            def compare(ctx: RequestContext) -> bool:
                left = first(ctx)
                for op, right_of in zip(ops, rest, strict=True):
                    right = right_of(ctx)
                    if not op(left, right):
                        return False
                    left = right
                return True

            return compare
        raise self.refuse(type(node).__name__)

    def assignment(self, node: ast.stmt) -> Assignment:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            raise self.refuse("that statement (only assignments to req.url or req.headers[...])")
        value = self.expression(node.value)
        target = node.targets[0]
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "url"
            and isinstance(target.value, ast.Name)
            and target.value.id == "req"
        ):

            def set_url(ctx: RequestContext) -> None:
                url = value(ctx)
                # A space or a line break would end the request line and start another.
                if not isinstance(url, str):
                    return
                # In canonical form, as the front door puts a client's (default rules): a value
                # made of client input must not reach the upstream as a path it reads otherwise.
                try:
                    ctx.flow.request.data.path = canonical_target(
                        url.encode("utf-8", "surrogateescape"), _ASSIGNED_URL_RULES
                    )
                except Refusal:
                    return

            return set_url
        if (
            isinstance(target, ast.Subscript | ast.Attribute)
            and isinstance(target.value, ast.Attribute)
            and target.value.attr == "headers"
            and isinstance(target.value.value, ast.Name)
            and target.value.value.id == "req"
        ):
            if isinstance(target, ast.Attribute):
                name: Evaluator = lambda _ctx, n=target.attr: n  # noqa: E731
            else:
                name = self.expression(target.slice)

            def set_header(ctx: RequestContext) -> None:
                header, new = name(ctx), value(ctx)
                if not is_header_name(header):
                    return
                if new is None:
                    ctx.flow.request.headers.pop(header, None)
                else:
                    ctx.flow.request.headers[header] = single_line(new)

            return set_header
        raise self.refuse("that assignment target (only req.url or req.headers[...])")


def _python_syntax(source: str, statements: bool = False) -> str:
    parts = _STRING.split(source)
    for i in range(0, len(parts), 2):  # outside string literals
        for pattern, replacement in _JS_OPERATORS:
            parts[i] = pattern.sub(replacement, parts[i])
        if statements:
            parts[i] = parts[i].replace(";", "\n")
    return "".join(parts)


def compile_expression(source: Any, path: KeyPath) -> Evaluator:
    """An expression, parsed now; evaluating it later only reads the request context."""
    if isinstance(source, bool | int | float):
        return lambda _ctx: source
    if not isinstance(source, str):
        raise ConfigError(path, f"must be an expression (a string), got {type(source).__name__}")
    try:
        tree = ast.parse(_python_syntax(source).strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(path, f"cannot parse the expression {source!r}: {e.msg}") from None
    return _Compiler(path, source).expression(tree.body)


def compile_condition(source: Any, path: KeyPath) -> Callable[[RequestContext], bool]:
    evaluate = compile_expression(source, path)
    return lambda ctx: bool(evaluate(ctx))


def compile_assignments(source: Any, path: KeyPath) -> tuple[Assignment, ...]:
    """``jscode``: assignments, one per line or separated by ``;``."""
    if not isinstance(source, str):
        raise ConfigError(path, f"must be a string of assignments, got {type(source).__name__}")
    try:
        lines = _python_syntax(source, statements=True).splitlines()
        tree = ast.parse("\n".join(line.strip() for line in lines), mode="exec")
    except SyntaxError as e:
        raise ConfigError(path, f"cannot parse {source!r}: {e.msg}") from None
    compiler = _Compiler(path, source)
    return tuple(compiler.assignment(statement) for statement in tree.body)
