from adamgen.passes.simplify import simplify
from tests.passes.helpers import rewrite_and_compare


def test_simplify_golden():
    rewrite_and_compare(
        """
        module {
        func @f(%g: f32[N], %c: bool) {
          %0 = const 1 : f32
          %1 = mul %g, %0 : f32[N]
          %2 = cast %1 : f32[N]
          %3 = div %2, %0 : f32[N]
          %4 = select %c, %3, %3 : f32[N]
          %5 = max %4, %4 : f32[N]
          %6 = const true : bool
          %7 = select %6, %5, %g : f32[N]
          return {out = %7}
        }
        }
        """,
        """
        module {
        func @f(%g: f32[N], %c: bool) {
          return {out = %g}
        }
        }
        """,
        simplify,
    )


def test_simplify_keeps_inexact_identities():
    # x + 0 (−0 + 0 = +0), x − x (inf − inf = nan) and x * 0 (nan, inf) must survive.
    text = """
        module {
        func @f(%g: f32[N]) {
          %0 = const 0 : f32
          %1 = add %g, %0 : f32[N]
          %2 = sub %1, %1 : f32[N]
          %3 = mul %2, %0 : f32[N]
          return {out = %3}
        }
        }
        """
    rewrite_and_compare(text, text, simplify)


def test_sub_negative_zero_is_not_removed():
    text = """
        module {
        func @f(%g: f32[N]) {
          %0 = const -0.0 : f32
          %1 = sub %g, %0 : f32[N]
          return {out = %1}
        }
        }
        """
    rewrite_and_compare(text, text.replace("const -0.0", "const -0"), simplify)
