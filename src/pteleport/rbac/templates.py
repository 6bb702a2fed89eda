"""Trait templates in role values: ``{{internal.db_users}}``, ``{{external["x"]}}`` and two functions.

A value holds at most one ``{{...}}`` with optional literal text before and after it
(``user-{{external.team}}``). Inside the braces:

- ``internal.NAME`` (NAME one of ``INTERNAL_TRAITS``) or ``external.NAME`` /
  ``external["any name"]`` read the user's traits (one map for both namespaces);
- ``email.local(EXPR)`` keeps the part of each value before "@" (values that are not an
  address are dropped);
- ``regexp.replace(EXPR, "pattern", "replacement")`` rewrites each value that matches the
  pattern (Go syntax for ``$1`` / ``${name}`` in the replacement) and drops the others.

A missing trait yields no values; so does an empty result. Malformed templates raise
``BadParameter`` from ``parse_template`` (roles call it when they are parsed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NoReturn

from common.errors import BadParameter

INTERNAL_TRAITS = frozenset(
    {
        "logins",
        "windows_logins",
        "kubernetes_users",
        "kubernetes_groups",
        "db_users",
        "db_names",
        "db_roles",
        "aws_role_arns",
        "azure_identities",
        "gcp_service_accounts",
        "host_user_uid",
        "host_user_gid",
        "jwt",
        "github_orgs",
        "mcp_tools",
    }
)
FUNCTIONS = ("email.local", "regexp.replace")
_HINT = (
    'use forms like {{internal.db_users}}, {{external.email}}, {{external["a-name"]}} '
    "or {{email.local(external.email)}}"
)

Traits = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class _Var:
    namespace: str
    name: str

    def values(self, traits: Traits) -> list[str]:
        return [v for v in traits.get(self.name, ()) if isinstance(v, str)]


@dataclass(frozen=True)
class _EmailLocal:
    arg: _Expr

    def values(self, traits: Traits) -> list[str]:
        out = []
        for value in self.arg.values(traits):
            local, at, domain = value.partition("@")
            if at and local and domain and "@" not in domain:
                out.append(local)
        return out


@dataclass(frozen=True)
class _RegexpReplace:
    arg: _Expr
    pattern: re.Pattern[str]
    replacement: str

    def values(self, traits: Traits) -> list[str]:
        out = []
        for value in self.arg.values(traits):
            if self.pattern.search(value) is None:
                continue
            out.append(self.pattern.sub(lambda m: _go_expand(self.replacement, m), value))
        return out


_Expr = _Var | _EmailLocal | _RegexpReplace


@dataclass(frozen=True)
class Template:
    """A parsed value: literal text, or prefix + expression + suffix."""

    prefix: str
    expr: _Expr | None
    suffix: str = ""

    def expand(self, traits: Traits) -> list[str]:
        if self.expr is None:
            return [self.prefix]
        return [self.prefix + v + self.suffix for v in _dedupe(self.expr.values(traits)) if v]


def is_template(value: str) -> bool:
    """Whether a value uses template braces at all."""
    return "{{" in value or "}}" in value


@lru_cache(maxsize=4096)
def parse_template(value: str) -> Template:
    """Parse one role value; raise ``BadParameter`` naming what is wrong with the template."""
    if not is_template(value):
        return Template(value, None)
    start = value.find("{{")
    end = value.find("}}")
    if start < 0 or end < start or value.count("{{") != 1 or value.count("}}") != 1:
        raise BadParameter(f'"{value}" is not a valid template: use exactly one {{{{...}}}}; {_HINT}')
    prefix, body, suffix = value[:start], value[start + 2 : end], value[end + 2 :]
    if "{" in prefix + suffix or "}" in prefix + suffix:
        raise BadParameter(f'"{value}" is not a valid template: stray brace outside {{{{...}}}}')
    parser = _Parser(value, body)
    expr = parser.expression()
    parser.expect_end()
    return Template(prefix, expr, suffix)


def validate(value: str) -> None:
    """Raise ``BadParameter`` if ``value`` holds a malformed template."""
    parse_template(value)


def expand(value: str, traits: Traits) -> list[str]:
    """Values for one role entry: a literal gives itself, a template gives zero or more values."""
    return parse_template(value).expand(traits)


def expand_all(values: Iterable[str], traits: Traits) -> list[str]:
    """Expand every entry and drop duplicates, keeping the first occurrence's order."""
    out: list[str] = []
    for value in values:
        out.extend(expand(value, traits))
    return _dedupe(out)


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _go_expand(template: str, match: re.Match[str]) -> str:
    """Expand a Go ``Regexp.Expand`` replacement: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``."""
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch != "$" or i + 1 >= len(template):
            out.append(ch)
            i += 1
            continue
        nxt = template[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt == "{":
            close = template.find("}", i + 2)
            name = template[i + 2 : close] if close > 0 else ""
            if close < 0 or not re.fullmatch(r"\w+", name):
                out.append("$")
                i += 1
                continue
            i = close + 1
        else:
            found = re.match(r"\w+", template[i + 1 :])
            if found is None:
                out.append("$")
                i += 1
                continue
            name = found.group(0)
            i += 1 + len(name)
        out.append(_group(match, name))
    return "".join(out)


def _group(match: re.Match[str], name: str) -> str:
    try:
        value = match.group(int(name)) if name.isdigit() else match.group(name)
    except IndexError:  # Go expands a group that does not exist to ""
        return ""
    return value or ""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<punct>[.,()\[\]])
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


class _Parser:
    """Recursive descent over the text between the braces."""

    def __init__(self, value: str, body: str) -> None:
        self.value = value
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(body):
            if body[pos:].strip() == "":
                break
            match = _TOKEN.match(body, pos)
            if match is None:
                self.fail(f"unexpected {body[pos:].strip()[:1]!r}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.pos = 0

    def fail(self, what: str, hint: bool = True) -> NoReturn:
        tail = f"; {_HINT}" if hint else ""
        raise BadParameter(f'"{self.value}" is not a valid template: {what}{tail}')

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self, kind: str, text: str | None = None) -> str:
        got_kind, got = self.peek()
        if got_kind != kind or (text is not None and got != text):
            want = repr(text) if text is not None else {"name": "a name", "string": "a quoted string"}[kind]
            self.fail(f"expected {want}, found {got!r}" if got else f"expected {want} before the end")
        self.pos += 1
        return got

    def expect_end(self) -> None:
        kind, text = self.peek()
        if kind != "end":
            self.fail(f"unexpected {text!r} after the expression")

    def expression(self) -> _Expr:
        kind, first = self.peek()
        if kind != "name":
            what = f"unexpected {first!r}" if first else "expected internal.NAME, external.NAME or a function"
            self.fail(what)
        self.pos += 1
        if first in ("internal", "external"):
            return self.variable(first)
        self.take("punct", ".")
        func = f"{first}.{self.take('name')}"
        if func not in FUNCTIONS:
            self.fail(f'unknown function "{func}" (supported: {", ".join(FUNCTIONS)})', hint=False)
        self.take("punct", "(")
        arg = self.expression()
        if func == "email.local":
            self.take("punct", ")")
            return _EmailLocal(arg)
        self.take("punct", ",")
        pattern = self.string()
        self.take("punct", ",")
        replacement = self.string()
        self.take("punct", ")")
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            what = f"regexp.replace pattern {pattern!r} is not a valid regular expression ({err})"
            self.fail(what, hint=False)
        return _RegexpReplace(arg, compiled, replacement)

    def variable(self, namespace: str) -> _Var:
        kind, text = self.peek()
        if kind == "punct" and text == ".":
            self.pos += 1
            name = self.take("name")
        elif kind == "punct" and text == "[":
            self.pos += 1
            name = self.string()
            self.take("punct", "]")
        else:
            self.fail(f'expected "." or "[" after {namespace}')
        if namespace == "internal" and name not in INTERNAL_TRAITS:
            known = ", ".join(sorted(INTERNAL_TRAITS))
            self.fail(f'unknown internal trait "{name}" (known: {known})', hint=False)
        if not name:
            self.fail(f"empty trait name after {namespace}")
        return _Var(namespace, name)

    def string(self) -> str:
        kind, text = self.peek()
        if kind != "string":
            self.fail(f"expected a quoted string, found {text!r}" if text else "expected a quoted string")
        self.pos += 1
        if text.startswith("`"):
            return text[1:-1]
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), text[1:-1])
