"""IR core: tables cover every op, text round-trips, the verifier rejects bad IR."""
import numpy as np
import pytest

from adamgen.backends.jax import JAX_LOWERING
from adamgen.ir.interp import NUMPY_IMPL, run_function
from adamgen.ir.node import Node, Type, make_const, make_input, Function
from adamgen.ir.ops import ARITY, Op
from adamgen.ir.parser import ParseError, parse_module
from adamgen.ir.printer import PP, print_module
from adamgen.ir.verify import RULES, VerifyError, verify_module, verify_function


@pytest.mark.parametrize("table", [NUMPY_IMPL, JAX_LOWERING, PP, RULES, ARITY],
                         ids=["numpy", "jax", "printer", "verifier", "arity"])
def test_every_table_covers_every_op(table):
    assert set(table) == set(Op)


def test_nodes_are_frozen_hashable_and_structural():
    a = Node(Op.MUL, Type("f32", "N"), (make_input("g", "f32", "N"), make_const(0.5, "f32")))
    b = Node(Op.MUL, Type("f32", "N"), (make_input("g", "f32", "N"), make_const(0.5, "f32")))
    assert a == b and hash(a) == hash(b) and a is not b
    with pytest.raises(Exception):
        a.op = Op.ADD  # type: ignore[misc]
    assert make_const(0.0, "f32") != make_const(-0.0, "f32")
    assert make_const(0.5, "f32") != make_const(0.5, "f16")


def test_constants_are_stored_in_their_dtype():
    c = make_const(0.1, "f32")
    assert c.attr("value").dtype == np.float32 and c.attr("value") == np.float32(0.1)


TEXT = """module attributes {dtype = "f32"} {
func @f(%g: f32[N], %k: i32) attributes {kind = "step"} {
  %0 = const 1e-07 : f32
  %1 = add %g, %0 : f32[N]
  %2 = reduce_sum %1 : f32[T]
  %3 = global_sum %2 : f32
  %4 = cast %k : f32
  %5 = lt %3, %4 : bool
  %6 = select %5, %1, %g : f32[N]
  %7 = const -inf : f32
  %8 = max %6, %7 : f32[N]
  %9 = const nan : f16
  return {out = %8, n = %9}
}
}
"""


def test_text_round_trip():
    module = parse_module(TEXT)
    verify_module(module)
    assert print_module(module) == TEXT
    assert print_module(parse_module(print_module(module))) == TEXT


@pytest.mark.parametrize("bad, message", [
    ("%1 = add %g, %k : f32[N]", "mixed dtypes"),
    ("%1 = sqrt %k : i32", "float-only"),
    ("%1 = reduce_sum %k : i32[T]", "maps shape"),
    ("%1 = select %g, %g, %g : f32[N]", "bool"),
    ("%1 = add %g, %g : f32", "broadcast"),
])
def test_verifier_rejects(bad, message):
    text = f"module {{\nfunc @f(%g: f32[N], %k: i32) {{\n  {bad}\n  return {{out = %1}}\n}}\n}}\n"
    with pytest.raises(VerifyError, match=message):
        verify_module(parse_module(text))


def test_verifier_rejects_undeclared_input():
    g = make_input("g", "f32", "N")
    fn = Function("f", (), (("out", Node(Op.NEG, g.type, (g,))),))
    with pytest.raises(VerifyError, match="not a declared parameter"):
        verify_function(fn)


@pytest.mark.parametrize("text, message", [
    ("module {\nfunc @f() {\n  %0 = frob : f32\n  return {}\n}\n}\n", "cannot parse"),
    ("module {\nfunc @f() {\n  %0 = frob %1 : f32\n  return {}\n}\n}\n", "unknown op"),
    ("module {\nfunc @f() {\n  %0 = neg %1 : f32\n  return {}\n}\n}\n", "undefined"),
    ("module {\nfunc @f() {\n  %0 = add %1 : f32\n  return {}\n}\n}\n", "takes 2 operands"),
])
def test_parser_errors_name_the_line(text, message):
    with pytest.raises(ParseError, match=message):
        parse_module(text)


def test_interpreter_broadcasts_scalar_per_tensor_and_elementwise():
    module = parse_module(TEXT.replace("%9 = const nan : f16", "%9 = const 2 : f16"))
    fn = module.functions[0]
    g = [np.array([1, 2], np.float32), np.array([[3]], np.float32)]
    out = run_function(fn, {"g": g, "k": np.int32(100)}, n_tensors=2)
    eps = np.float32(1e-7)
    # sums: 3.0000001 and 3.0000002 (per tensor), global 6.0000005 < 100: select picks g + eps
    assert [o.tolist() for o in out["out"]] == [(g[0] + eps).tolist(), (g[1] + eps).tolist()]
    assert out["out"][1].shape == (1, 1)
    assert out["n"].dtype == np.float16
