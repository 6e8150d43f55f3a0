"""Confine a PromQL query to one namespace: every vector selector gets `namespace="<ns>"` (pure).

A tenant's custom query (`metrics[].query` on a Rollout, a schedule trigger's `query`) runs against a
Prometheus that every namespace shares. `confine(query, ns)` rewrites it so that each vector selector —
`name`, `name{...}`, `{...}`, whether inside a function, a subquery, either side of `or`/`unless`, under an
`offset` or `@` modifier — carries the matcher `namespace="<ns>"`; a selector that already names a namespace
is accepted only when it is exactly `namespace="<ns>"` (kept once); any other namespace matcher
(`namespace!="x"`, `namespace=~".*"`, `namespace="other"`, an escaped or quoted spelling of it) is refused.

It fails closed: a token it does not know, an unbalanced bracket, a matcher it cannot read, or a
construct it does not model (`or` between label matchers) raise `QueryRefused`, and the query is not sent.
Text outside the selectors (strings in `label_replace`, comments, durations) is left byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAMESPACE_LABEL = "namespace"
_NS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class QueryRefused(ValueError):
    """The query cannot be confined to the namespace (or reads another one); it is not sent."""


@dataclass(frozen=True)
class Token:
    kind: str  # ident, number, string, op, punct
    text: str
    start: int
    end: int


_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# numbers, hex, durations (5m30s), 1e-3, .5
_NUMBER = re.compile(r"(0[xX][0-9a-fA-F]+|([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?([a-zA-Z][a-zA-Z0-9]*)?)")
_OPS = ("==", "!=", "=~", "!~", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "%", "^", "@", ":")
_PUNCT = "(){}[],"
_STEP = re.compile(r"^:([0-9][0-9a-zA-Z]*)?$")  # a subquery's ":1m" (lexed as an identifier: ':' may start one)

_AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}


def tokenize(query: str) -> list[Token]:
    """PromQL tokens (whitespace and `#` comments dropped). Unknown characters raise QueryRefused."""
    out: list[Token] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            j = query.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c in "\"'`":
            j = i + 1
            while j < n and query[j] != c:
                if query[j] == "\\" and c != "`":
                    j += 1
                elif query[j] == "\n" and c != "`":
                    raise QueryRefused("a string is not closed on its line")
                j += 1
            if j >= n:
                raise QueryRefused("a string is not closed")
            out.append(Token("string", query[i:j + 1], i, j + 1))
            i = j + 1
            continue
        m = _IDENT.match(query, i)
        if m:
            out.append(Token("ident", m.group(), i, m.end()))
            i = m.end()
            continue
        m = _NUMBER.match(query, i)
        if m and m.group():
            out.append(Token("number", m.group(), i, m.end()))
            i = m.end()
            continue
        if c in _PUNCT:
            out.append(Token("punct", c, i, i + 1))
            i += 1
            continue
        op = next((o for o in _OPS if query.startswith(o, i)), None)
        if op is None:
            raise QueryRefused(f"unexpected character {c!r} at {i}")
        out.append(Token("op", op, i, i + len(op)))
        i += len(op)
    return out


def _label_name(tok: Token) -> str:
    if tok.kind == "ident":
        return tok.text
    if tok.kind == "string" and "\\" not in tok.text:
        return tok.text[1:-1]
    raise QueryRefused(f"cannot read the label name {tok.text!r}")


def _allowed_values(namespace: str) -> set[str]:
    return {f'"{namespace}"', f"'{namespace}'", f"`{namespace}`"}


def _matchers(toks: list[Token], i: int, namespace: str) -> tuple[list[str], int]:
    """Parse `{ ... }` starting at toks[i] == "{": the kept matchers' text and the index after "}"."""
    assert toks[i].text == "{"
    kept: list[str] = []
    i += 1
    while True:
        if i >= len(toks):
            raise QueryRefused("a label selector is not closed")
        if toks[i].text == "}" and toks[i].kind == "punct":
            return kept, i + 1
        name_tok = toks[i]
        if name_tok.kind not in ("ident", "string"):
            raise QueryRefused(f"unexpected {name_tok.text!r} in a label selector")
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if nxt is not None and nxt.kind == "op" and nxt.text in ("=", "!=", "=~", "!~"):
            val = toks[i + 2] if i + 2 < len(toks) else None
            if val is None or val.kind != "string":
                raise QueryRefused(f"label matcher {name_tok.text}{nxt.text} needs a string value")
            label = _label_name(name_tok)
            if label == NAMESPACE_LABEL:
                if nxt.text != "=" or val.text not in _allowed_values(namespace):
                    raise QueryRefused(f"the query selects {label}{nxt.text}{val.text}; queries are confined to namespace {namespace!r}")
            else:
                kept.append(f"{name_tok.text}{nxt.text}{val.text}")
            i += 3
        elif name_tok.kind == "string":  # {"metric.name", ...}: a quoted metric name
            kept.append(name_tok.text)
            i += 1
        else:
            raise QueryRefused(f"label {name_tok.text!r} has no matcher")
        if i < len(toks) and toks[i].kind == "punct" and toks[i].text == ",":
            i += 1
        elif not (i < len(toks) and toks[i].kind == "punct" and toks[i].text == "}"):
            raise QueryRefused(f"expected ',' or '}}' in a label selector, got {toks[i].text if i < len(toks) else 'the end'!r}")


def _skip_balanced(toks: list[Token], i: int, open_: str, close: str, allowed: set[str]) -> int:
    """The index after the `close` matching toks[i] == open_, allowing only token kinds in `allowed` inside."""
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j]
        if t.kind == "punct" and t.text == open_:
            depth += 1
        elif t.kind == "punct" and t.text == close:
            depth -= 1
            if depth == 0:
                return j + 1
        elif t.kind not in allowed and not (t.kind == "punct" and t.text == ",") and not (open_ == "[" and _STEP.match(t.text)):
            raise QueryRefused(f"unexpected {t.text!r} inside {open_}{close}")
    raise QueryRefused(f"unbalanced {open_!r}")


# long: one pass of a tokenizer-driven state machine over a PromQL query; its states share locals (parens, operand,
# edits) that split functions would thread through every call
def confine(query: str, namespace: str) -> str:
    """The query with `namespace="<namespace>"` in every vector selector (see the module doc). Raises QueryRefused.

    It walks the tokens as Prometheus' grammar does: in operand position an identifier is a function or an
    aggregation when a `(` (or `by`/`without`) follows, else a metric name — keywords included (`offset`, `sum`
    and `or` are valid metric names there); in operator position only operators and modifiers may follow.
    """
    if not _NS.match(namespace):
        raise QueryRefused(f"not a namespace name: {namespace!r}")
    toks = tokenize(query)
    edits: list[tuple[int, int, str]] = []
    parens = 0
    operand = True  # an expression may start here
    modifiers = False  # just after a binary operator: bool / on(...) / ignoring(...) / group_left / group_right may come
    i = 0

    def at(j: int, kind: str, text: str | None = None) -> bool:
        return j < len(toks) and toks[j].kind == kind and (text is None or toks[j].text == text)

    while i < len(toks):
        t = toks[i]
        low = t.text.lower()
        if t.kind == "ident" and operand:
            if modifiers and low == "bool":
                i += 1
                continue
            if modifiers and low in ("on", "ignoring") and at(i + 1, "punct", "("):
                i = _skip_balanced(toks, i + 1, "(", ")", {"ident", "string"})
                continue
            if modifiers and low in ("group_left", "group_right"):
                i = _skip_balanced(toks, i + 1, "(", ")", {"ident", "string"}) if at(i + 1, "punct", "(") else i + 1
                continue
            modifiers = False
            if at(i + 1, "punct", "("):
                i += 1  # a function call or an aggregation: its arguments are walked as they come
                continue
            if low in _AGGREGATORS and i + 1 < len(toks) and toks[i + 1].kind == "ident" and toks[i + 1].text.lower() in ("by", "without"):
                if not at(i + 2, "punct", "("):
                    raise QueryRefused(f"{toks[i + 1].text} needs a label list")
                i = _skip_balanced(toks, i + 2, "(", ")", {"ident", "string"})
                if not at(i, "punct", "("):
                    raise QueryRefused(f"{t.text} {toks[i - 1].text}(...) needs its argument in parentheses")
                continue
            if low in ("inf", "nan"):
                operand = False
                i += 1
                continue
            if at(i + 1, "punct", "{"):  # a metric name (keywords included) with matchers
                kept, after = _matchers(toks, i + 1, namespace)
                edits.append((t.start, toks[after - 1].end, _selector(t.text, kept, namespace)))
                i = after
            else:
                edits.append((t.start, t.end, _selector(t.text, [], namespace)))
                i += 1
            operand = False
            continue
        if t.kind == "ident":  # operator position
            if low in ("and", "or", "unless", "atan2"):
                operand, modifiers = True, True
                i += 1
            elif low in ("by", "without") and at(i + 1, "punct", "("):
                i = _skip_balanced(toks, i + 1, "(", ")", {"ident", "string"})
            elif low == "offset":
                i += 1
                if at(i, "op", "-"):
                    i += 1
                if not at(i, "number"):
                    raise QueryRefused("offset needs a duration")
                i += 1
            else:
                raise QueryRefused(f"unexpected {t.text!r} after an expression")
            continue
        modifiers = False
        if t.kind == "punct" and t.text == "{":
            if not operand:
                raise QueryRefused("unexpected '{' after an expression")
            kept, after = _matchers(toks, i, namespace)
            edits.append((t.start, toks[after - 1].end, _selector("", kept, namespace)))
            i, operand = after, False
        elif t.kind == "punct" and t.text == "[":
            if operand:
                raise QueryRefused("unexpected '['")
            i = _skip_balanced(toks, i, "[", "]", {"number", "op"})  # a range or subquery: durations only
        elif t.kind == "punct" and t.text == "(":
            parens, operand = parens + 1, True
            i += 1
        elif t.kind == "punct" and t.text == ")":
            parens -= 1
            if parens < 0 or operand and not (i > 0 and toks[i - 1].text == "("):
                raise QueryRefused("unbalanced or empty ')'")
            operand = False
            i += 1
        elif t.kind == "punct" and t.text == ",":
            if parens == 0:
                raise QueryRefused("',' outside a function call")
            operand = True
            i += 1
        elif t.kind == "punct":  # '}' or ']' without its opening
            raise QueryRefused(f"unbalanced {t.text!r}")
        elif t.kind in ("number", "string"):
            if not operand:
                raise QueryRefused(f"unexpected {t.text!r} after an expression")
            operand = False
            i += 1
        elif t.text == "@":
            if operand:
                raise QueryRefused("'@' needs an expression before it")
            if at(i + 1, "number"):
                i += 2
            elif at(i + 1, "ident") and toks[i + 1].text in ("start", "end") and at(i + 2, "punct", "(") and at(i + 3, "punct", ")"):
                i += 4
            else:
                raise QueryRefused("'@' needs a timestamp, start() or end()")
        elif t.text == ":":
            raise QueryRefused("':' outside a subquery")
        else:  # an arithmetic or comparison operator: binary after an expression, unary before one
            if not operand:
                operand, modifiers = True, True
            elif t.text not in ("+", "-"):
                raise QueryRefused(f"unexpected {t.text!r}")
            i += 1
    if parens != 0:
        raise QueryRefused("unbalanced '('")
    if operand and toks:
        raise QueryRefused("the query ends where an expression is expected")
    out = query
    for start, end, text in reversed(edits):
        out = out[:start] + text + out[end:]
    return out


def _selector(name: str, kept: list[str], namespace: str) -> str:
    return name + "{" + "".join(m + ", " for m in kept) + f'{NAMESPACE_LABEL}="{namespace}"' + "}"
