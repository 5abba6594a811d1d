import numpy as np

from adamgen.ir.node import make_const
from adamgen.passes.fold_constants import fold_constants, fold_all_const
from adamgen.ir.node import Node, Type
from adamgen.ir.ops import Op
from tests.passes.helpers import rewrite_and_compare


def test_fold_constants_golden():
    rewrite_and_compare(
        """
        module {
        func @f(%g: f32[N]) {
          %0 = const 1 : f32
          %1 = const 128 : f32
          %2 = div %0, %1 : f32
          %3 = mul %g, %2 : f32[N]
          %4 = const 0.9 : f32
          %5 = cast %4 : f16
          return {out = %3, b = %5}
        }
        }
        """,
        """
        module {
        func @f(%g: f32[N]) {
          %0 = const 0.0078125 : f32
          %1 = mul %g, %0 : f32[N]
          %2 = const 0.9 : f16
          return {out = %1, b = %2}
        }
        }
        """,
        fold_constants,
    )


def test_folding_rounds_in_the_op_dtype_not_python_float():
    # 1 - 0.999 in float16 is computed on float16 operands: f16(1) - f16(0.999)
    node = Node(Op.SUB, Type("f16"), (make_const(1, "f16"), make_const(0.999, "f16")))
    folded = fold_all_const(node)
    expect = np.float16(1) - np.float16(0.999)
    assert folded.attr("value").dtype == np.float16
    assert folded.attr("value") == expect
    assert float(folded.attr("value")) != 1 - 0.999


def test_fold_leaves_runtime_values_alone():
    rewrite_and_compare(
        """
        module {
        func @f(%step: i32) {
          %0 = const 1 : i32
          %1 = add %step, %0 : i32
          return {step = %1}
        }
        }
        """,
        """
        module {
        func @f(%step: i32) {
          %0 = const 1 : i32
          %1 = add %step, %0 : i32
          return {step = %1}
        }
        }
        """,
        fold_constants,
    )
