"""A tiny evaluator for the ``where`` predicates of role rules and impersonate conditions.

Grammar (whitespace is free)::

    expr    := and ("||" and)*
    and     := unary ("&&" unary)*
    unary   := "!" unary | compare
    compare := primary (("==" | "!=") primary)?
    primary := "(" expr ")" | STRING | "true" | "false" | call | path
    call    := ("equals" | "contains") "(" expr "," expr ")"
    path    := NAME ("." NAME | "[" STRING "]")*

Strings are double-quoted (``\\"`` and ``\\\\`` escapes) or backquoted. A path reads a
nested dict (``session.participants``, ``user.spec.traits["team"]``); a missing key gives
"nothing", which equals nothing, is contained in nothing and contains nothing.
``contains(list, value)`` tests membership; ``equals(a, b)`` and ``==`` test equality.
Anything else is refused by ``parse_where`` with ``BadParameter``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn

from common.errors import BadParameter

FUNCTIONS = ("contains", "equals")

_MISSING = object()


class Predicate:
    """A parsed ``where`` expression."""

    def __init__(self, text: str, node: _Node) -> None:
        self.text = text
        self._node = node

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """True only when the expression evaluates to the boolean true."""
        return self._node.eval(context) is True

    def __repr__(self) -> str:
        return f"Predicate({self.text!r})"


class _Node:
    returns_bool = False

    def eval(self, ctx: Mapping[str, Any]) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class _Literal(_Node):
    value: Any

    @property
    def returns_bool(self) -> bool:  # type: ignore[override]
        return isinstance(self.value, bool)

    def eval(self, ctx: Mapping[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True)
class _Path(_Node):
    parts: tuple[str, ...]

    def eval(self, ctx: Mapping[str, Any]) -> Any:
        current: Any = ctx
        for part in self.parts:
            if not isinstance(current, Mapping) or part not in current:
                return _MISSING
            current = current[part]
        return _MISSING if current is None else current


@dataclass(frozen=True)
class _Not(_Node):
    operand: _Node
    returns_bool = True

    def eval(self, ctx: Mapping[str, Any]) -> Any:
        return self.operand.eval(ctx) is not True


@dataclass(frozen=True)
class _BoolOp(_Node):
    op: str
    left: _Node
    right: _Node
    returns_bool = True

    def eval(self, ctx: Mapping[str, Any]) -> Any:
        if self.op == "&&":
            return self.left.eval(ctx) is True and self.right.eval(ctx) is True
        return self.left.eval(ctx) is True or self.right.eval(ctx) is True


@dataclass(frozen=True)
class _Equals(_Node):
    left: _Node
    right: _Node
    negate: bool = False
    returns_bool = True

    def eval(self, ctx: Mapping[str, Any]) -> Any:
        a, b = self.left.eval(ctx), self.right.eval(ctx)
        equal = a is not _MISSING and b is not _MISSING and a == b
        return not equal if self.negate else equal


@dataclass(frozen=True)
class _Contains(_Node):
    haystack: _Node
    needle: _Node
    returns_bool = True

    def eval(self, ctx: Mapping[str, Any]) -> Any:
        items, item = self.haystack.eval(ctx), self.needle.eval(ctx)
        if item is _MISSING or not isinstance(items, list | tuple | set | frozenset):
            return False
        return item in items


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>&&|\|\||==|!=|!|[().,\[\]])
    )""",
    re.VERBOSE,
)


@lru_cache(maxsize=1024)
def parse_where(text: str) -> Predicate:
    """Parse a predicate; raise ``BadParameter`` saying what is wrong with it."""
    parser = _Parser(text)
    node = parser.expr()
    parser.expect_end()
    if isinstance(node, _Literal) and not node.returns_bool:
        parser.fail("a condition is needed, not a lone value")
    return Predicate(text, node)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while text[pos:].strip():
            match = _TOKEN.match(text, pos)
            if match is None:
                self.fail(f"unexpected {text[pos:].strip()[:10]!r}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.pos = 0

    def fail(self, what: str) -> NoReturn:
        raise BadParameter(
            f'where "{self.text}" is not valid: {what}; '
            "use forms like contains(session.participants, user.metadata.name), "
            'equals(user.metadata.name, "alice"), !, && and ||'
        )

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def accept(self, text: str) -> bool:
        kind, got = self.peek()
        if kind == "op" and got == text:
            self.pos += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            got = self.peek()[1]
            self.fail(f"expected {text!r}, found {got!r}" if got else f"expected {text!r} before the end")

    def expect_end(self) -> None:
        kind, got = self.peek()
        if kind != "end":
            self.fail(f"unexpected {got!r}")

    def expr(self) -> _Node:
        node = self.conj()
        while self.accept("||"):
            node = _BoolOp("||", self.condition(node), self.condition(self.conj()))
        return node

    def conj(self) -> _Node:
        node = self.unary()
        while self.accept("&&"):
            node = _BoolOp("&&", self.condition(node), self.condition(self.unary()))
        return node

    def unary(self) -> _Node:
        if self.accept("!"):
            return _Not(self.condition(self.unary()))
        return self.compare()

    def compare(self) -> _Node:
        node = self.primary()
        for op in ("==", "!="):
            if self.accept(op):
                return _Equals(node, self.primary(), negate=op == "!=")
        return node

    def condition(self, node: _Node) -> _Node:
        if isinstance(node, _Literal) and not node.returns_bool:
            self.fail(f"{node.value!r} is a value where a condition is needed")
        return node

    def primary(self) -> _Node:
        kind, got = self.peek()
        if kind == "end":
            self.fail("the expression ends too early")
        self.pos += 1
        if kind == "string":
            return _Literal(_unquote(got))
        if kind == "op" and got == "(":
            node = self.expr()
            self.expect(")")
            return node
        if kind != "name":
            self.fail(f"unexpected {got!r}")
        if got in ("true", "false"):
            return _Literal(got == "true")
        if self.accept("("):
            if got not in FUNCTIONS:
                self.fail(f'unknown function "{got}" (supported: {", ".join(FUNCTIONS)})')
            first = self.expr()
            self.expect(",")
            second = self.expr()
            self.expect(")")
            return _Contains(first, second) if got == "contains" else _Equals(first, second)
        parts = [got]
        while True:
            if self.accept("."):
                kind, name = self.peek()
                if kind != "name":
                    self.fail(f"expected a field name after '.', found {name!r}")
                self.pos += 1
                parts.append(name)
            elif self.accept("["):
                kind, key = self.peek()
                if kind != "string":
                    self.fail(f"expected a quoted key inside [...], found {key!r}")
                self.pos += 1
                parts.append(_unquote(key))
                self.expect("]")
            else:
                return _Path(tuple(parts))


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    return re.sub(r"\\(.)", lambda m: m.group(1), token[1:-1])
