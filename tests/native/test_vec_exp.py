"""The exponential of the row kernels (``vec.h``'s ``vexp_neg``), compiled as each build this CPU
executes compiles it: within 1 ulp of double ``exp`` over float32 t in [-87, 0] (1.25 in a build
without fused multiply-add, whose every step rounds twice), exactly 1 at 0, exactly 0 from -104
down (so at -inf), and NaN kept."""

from __future__ import annotations

import subprocess

import pytest

from logitlab import _native

PROGRAM = r"""
#define LL_NATIVE_WIDTH
#include "vec.h"
#include <stdio.h>
int main(void) {
    float lo = -87.0f;
    uint32_t last;
    memcpy(&last, &lo, 4);
    double worst = 0.0;
    /* Every 7th float32 in [-87, -0]: ~1.6e8 values, all exponents and a spread of mantissas. */
    for (uint32_t b = 0x80000000u; b <= last; b += 7 * VL) {
        vf t;
        for (int i = 0; i < VL; i++) { uint32_t bits = b + 7u * i; memcpy(&t[i], &bits, 4); }
        vf e = vexp_neg(t);
        for (int i = 0; i < VL; i++) {
            if (t[i] < lo) continue;
            double exact = exp((double)t[i]);
            float nearest = (float)exact;
            double ulp = (double)nextafterf(nearest, INFINITY) - (double)nearest;
            double err = fabs((double)e[i] - exact) / ulp;
            if (err > worst) worst = err;
        }
    }
    printf("%.6f\n", worst);
    const float special[] = {0.0f, -0.0f, -104.0f, -1e30f, -INFINITY, NAN};
    for (int i = 0; i < 6; i++) printf("%a\n", (double)vexp_neg(vsplat(special[i]))[0]);
    return 0;
}
"""


@pytest.mark.parametrize("build", _native.supported_builds())
def test_exp_is_within_one_ulp_and_exact_at_the_ends(build, tmp_path):
    cc = _native._compiler()
    if cc is None:
        pytest.skip("no C compiler here: the torch path is the only one (tested everywhere)")
    spec = next(b for b in _native.builds() if b.name == build)
    (tmp_path / "exp.c").write_text(PROGRAM)
    subprocess.run([cc, "-O2", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", *spec.flags, "-I",
                    str(_native.source_dir()), "-o", str(tmp_path / "exp"), str(tmp_path / "exp.c"), "-lm"],
                   check=True, capture_output=True, timeout=120)
    out = subprocess.run([str(tmp_path / "exp")], check=True, capture_output=True, text=True,
                         timeout=120).stdout.split()
    worst, specials = float(out[0]), out[1:]
    bound = 1.0 if "fma" in spec.needs else 1.25
    assert worst < bound, f"{build}: {worst} ulp"
    assert specials[:2] == ["0x1p+0", "0x1p+0"], specials  # exp(±0) = 1
    assert specials[2:5] == ["0x0p+0"] * 3, specials  # -104, -1e30, -inf
    assert specials[5].lstrip("-") == "nan", specials
