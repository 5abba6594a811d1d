"""rewrite_and_compare: parse `before`, run one pass, print, compare with `after`."""
from __future__ import annotations

import textwrap

from adamgen.ir.parser import parse_module
from adamgen.ir.printer import print_module
from adamgen.ir.verify import verify_module


def rewrite_and_compare(before: str, after: str, pass_fn) -> None:
    before, after = textwrap.dedent(before).strip() + "\n", textwrap.dedent(after).strip() + "\n"
    module = parse_module(before)
    verify_module(module)
    out = pass_fn(module)
    verify_module(out)
    text = print_module(out)
    assert text == after, f"--- got ---\n{text}\n--- expected ---\n{after}"
    assert print_module(parse_module(text)) == text
