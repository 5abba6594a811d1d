from adamgen.passes.fuse import fuse
from tests.passes.helpers import rewrite_and_compare


def test_fuse_golden_global_norm():
    # g * (1 / sqrt(sum_t sum(g*g))) : one reduction kernel, the scalar math, one update kernel
    rewrite_and_compare(
        """
        module {
        func @adam_step(%step: i32, %g: f32[N]) attributes {kind = "step"} {
          %0 = mul %g, %g : f32[N]
          %1 = reduce_sum %0 : f32[T]
          %2 = global_sum %1 : f32
          %3 = sqrt %2 : f32
          %4 = const 1 : f32
          %5 = div %4, %3 : f32
          %6 = mul %g, %5 : f32[N]
          %7 = const 1 : i32
          %8 = add %step, %7 : i32
          return {param = %6, step = %8}
        }
        }
        """,
        """
        module {
        func @scalars0(%step: i32) attributes {kind = "scalar"} {
          %0 = const 1 : i32
          %1 = add %step, %0 : i32
          return {step = %1}
        }
        func @reduce1(%g: f32[N]) attributes {kind = "reduce"} {
          %0 = mul %g, %g : f32[N]
          %1 = reduce_sum %0 : f32[T]
          return {x0 = %1}
        }
        func @scalars1(%x0: f32[T]) attributes {kind = "scalar"} {
          %0 = const 1 : f32
          %1 = global_sum %x0 : f32
          %2 = sqrt %1 : f32
          %3 = div %0, %2 : f32
          return {x3 = %3}
        }
        func @update(%g: f32[N], %x3: f32) attributes {kind = "elementwise"} {
          %0 = mul %g, %x3 : f32[N]
          return {param = %0}
        }
        }
        """,
        fuse,
    )


def test_fuse_plain_step_has_no_reduction_kernel():
    rewrite_and_compare(
        """
        module {
        func @adam_step(%step: i32, %g: f32[N]) attributes {kind = "step"} {
          %0 = cast %step : f32
          %1 = mul %g, %0 : f32[N]
          return {param = %1}
        }
        }
        """,
        """
        module {
        func @scalars0(%step: i32) attributes {kind = "scalar"} {
          %0 = cast %step : f32
          return {x0 = %0}
        }
        func @update(%g: f32[N], %x0: f32) attributes {kind = "elementwise"} {
          %0 = mul %g, %x0 : f32[N]
          return {param = %0}
        }
        }
        """,
        fuse,
    )
