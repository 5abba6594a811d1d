from adamgen.passes.dce import dce
from tests.passes.helpers import rewrite_and_compare


def test_dce_golden():
    rewrite_and_compare(
        """
        module {
        func @f(%step: i32, %g: f32[N], %unused: f32[N]) {
          %0 = const 2 : f32
          %1 = mul %g, %0 : f32[N]
          return {out = %1}
        }
        }
        """,
        """
        module {
        func @f(%g: f32[N]) {
          %0 = const 2 : f32
          %1 = mul %g, %0 : f32[N]
          return {out = %1}
        }
        }
        """,
        dce,
    )
