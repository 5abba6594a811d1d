from adamgen.passes.cse import cse
from tests.passes.helpers import rewrite_and_compare


def test_cse_golden():
    rewrite_and_compare(
        """
        module {
        func @f(%g: f32[N], %m: f32[N]) {
          %0 = sub %g, %m : f32[N]
          %1 = const 0.1 : f32
          %2 = mul %0, %1 : f32[N]
          %3 = sub %g, %m : f32[N]
          %4 = const 0.1 : f32
          %5 = mul %3, %4 : f32[N]
          %6 = add %2, %5 : f32[N]
          return {out = %6}
        }
        }
        """,
        """
        module {
        func @f(%g: f32[N], %m: f32[N]) {
          %0 = sub %g, %m : f32[N]
          %1 = const 0.1 : f32
          %2 = mul %0, %1 : f32[N]
          %3 = add %2, %2 : f32[N]
          return {out = %3}
        }
        }
        """,
        cse,
    )


def test_cse_does_not_merge_different_dtypes_or_signed_zeros():
    text = """
        module {
        func @f(%g: f32[N]) {
          %0 = const 0 : f32
          %1 = sub %g, %0 : f32[N]
          %2 = const -0 : f32
          %3 = sub %g, %2 : f32[N]
          %4 = add %1, %3 : f32[N]
          return {out = %4}
        }
        }
        """
    rewrite_and_compare(text, text, cse)
