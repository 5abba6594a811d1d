"""Parse the canonical text form (see printer.py) back into a Module."""
from __future__ import annotations

import re

from adamgen.ir.node import Function, Module, Node, Type, make_const, make_input
from adamgen.ir.ops import ARITY, BY_NAME, Op


class ParseError(ValueError):
    pass


_TYPE = r"([a-z0-9]+)(?:\[([TN])\])?"
_FUNC = re.compile(r"^func @([A-Za-z_][\w]*)\((.*)\)(?: attributes \{(.*)\})? \{$")
_PARAM = re.compile(r"^%([A-Za-z_]\w*): " + _TYPE + "$")
_STMT = re.compile(r"^(%\d+) = ([a-z_]+) (.*) : " + _TYPE + "$")
_RETURN = re.compile(r"^return \{(.*)\}$")
_ATTR = re.compile(r'^(\w+) = "([^"]*)"$')
_MODULE = re.compile(r"^module(?: attributes \{(.*)\})? \{$")


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",")] if text.strip() else []


def _attrs(text: str | None, lineno: int) -> tuple[tuple[str, str], ...]:
    out = []
    for part in _split(text or ""):
        m = _ATTR.match(part)
        if not m:
            raise ParseError(f"line {lineno}: bad attribute {part!r}; expected name = \"value\"")
        out.append((m.group(1), m.group(2)))
    return tuple(out)


def _type(dtype: str, shape: str | None) -> Type:
    return Type(dtype, shape or "")


def parse_module(text: str) -> Module:
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise ParseError("empty input; expected 'module {'")
    lineno, first = lines[0]
    m = _MODULE.match(first)
    if not m:
        raise ParseError(f"line {lineno}: expected 'module {{', got {first!r}")
    attrs = _attrs(m.group(1), lineno)
    functions: list[Function] = []
    pos = 1
    while pos < len(lines) and lines[pos][1] != "}":
        fn, pos = _parse_function(lines, pos)
        functions.append(fn)
    if pos != len(lines) - 1:
        raise ParseError(f"line {lines[min(pos, len(lines) - 1)][0]}: expected a final '}}' closing the module")
    return Module(tuple(functions), attrs)


def _parse_function(lines: list[tuple[int, str]], pos: int) -> tuple[Function, int]:
    lineno, header = lines[pos]
    m = _FUNC.match(header)
    if not m:
        raise ParseError(f"line {lineno}: expected 'func @name(...) {{', got {header!r}")
    name, params, attr_text = m.groups()
    env: dict[str, Node] = {}
    inputs = []
    for p in _split(params):
        pm = _PARAM.match(p)
        if not pm:
            raise ParseError(f"line {lineno}: bad parameter {p!r}; expected %name: type")
        node = make_input(pm.group(1), pm.group(2), pm.group(3) or "")
        env["%" + pm.group(1)] = node
        inputs.append(node)
    pos += 1
    while pos < len(lines):
        lineno, line = lines[pos]
        if line.startswith("return"):
            outputs = _parse_return(line, lineno, env)
            if pos + 1 >= len(lines) or lines[pos + 1][1] != "}":
                raise ParseError(f"line {lineno}: expected '}}' after return")
            fn = Function(name, tuple(inputs), outputs, _attrs(attr_text, lines[0][0]))
            return fn, pos + 2
        _parse_stmt(line, lineno, env)
        pos += 1
    raise ParseError(f"function @{name}: missing return")


def _parse_stmt(line: str, lineno: int, env: dict[str, Node]) -> None:
    m = _STMT.match(line)
    if not m:
        raise ParseError(f"line {lineno}: cannot parse {line!r}; expected '%N = op args : type'")
    result, opname, args, dtype, shape = m.groups()
    if result in env:
        raise ParseError(f"line {lineno}: {result} defined twice")
    if opname not in BY_NAME:
        raise ParseError(f"line {lineno}: unknown op {opname!r}; allowed: {sorted(BY_NAME)}")
    op = BY_NAME[opname]
    ty = _type(dtype, shape)
    if op is Op.CONST:
        env[result] = make_const(_parse_number(args, ty.dtype, lineno), ty.dtype, ty.shape)
        return
    if op is Op.INPUT:
        raise ParseError(f"line {lineno}: inputs are declared as function parameters")
    names = _split(args)
    if len(names) != ARITY[op]:
        raise ParseError(f"line {lineno}: {opname} takes {ARITY[op]} operands, got {len(names)}")
    missing = [n for n in names if n not in env]
    if missing:
        raise ParseError(f"line {lineno}: use of undefined value(s) {missing}")
    env[result] = Node(op, ty, tuple(env[n] for n in names))


def _parse_number(text: str, dtype: str, lineno: int):
    text = text.strip()
    if dtype == "bool":
        if text not in ("true", "false"):
            raise ParseError(f"line {lineno}: bool constant must be true or false, got {text!r}")
        return text == "true"
    try:
        return int(text) if dtype == "i32" else float(text)
    except ValueError:
        raise ParseError(f"line {lineno}: bad constant {text!r}") from None


def _parse_return(line: str, lineno: int, env: dict[str, Node]) -> tuple[tuple[str, Node], ...]:
    m = _RETURN.match(line)
    if not m:
        raise ParseError(f"line {lineno}: expected 'return {{name = %v, ...}}'")
    outs = []
    for part in _split(m.group(1)):
        name, _, ref = (s.strip() for s in part.partition("="))
        if ref not in env:
            raise ParseError(f"line {lineno}: return of undefined value {ref}")
        outs.append((name, env[ref]))
    return tuple(outs)
