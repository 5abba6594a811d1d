"""Random Adam configurations and data, shared by the target-vs-oracle tests."""
from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
SHAPES = [(3,), (40,), (4, 5), (70,), (2, 3, 2), (1,), ()]  # one-element: Keras divides them exactly


def schedule(kind: str, lr: float):
    from adamgen import schedules as S

    if kind == "exp":
        return S.ExponentialDecay(lr, decay_steps=3, decay_rate=0.7)
    if kind == "exp_stair":
        return S.ExponentialDecay(lr, decay_steps=2, decay_rate=0.5, staircase=True)
    if kind == "cosine":
        return S.CosineDecay(lr, decay_steps=5, alpha=0.1, warmup_target=lr * 2, warmup_steps=2)
    if kind == "piecewise":
        return S.PiecewiseConstantDecay([2, 4], [lr, lr / 2, lr / 4])
    if kind == "poly":
        return S.PolynomialDecay(lr, decay_steps=4, end_learning_rate=lr / 10, power=2.0, cycle=True)
    if kind == "inverse":
        return S.InverseTimeDecay(lr, decay_steps=2, decay_rate=0.5, staircase=False)
    if kind == "restarts":
        return S.CosineDecayRestarts(lr, first_decay_steps=2, t_mul=2.0, m_mul=0.9, alpha=0.05)
    raise ValueError(kind)


LR_KINDS = ["float", "exp", "exp_stair", "cosine", "piecewise", "poly", "inverse", "restarts", "callable0",
            "callable1"]


@st.composite
def configs(draw, dtypes=tuple(DTYPES), allow_callables=True):
    dtype = draw(st.sampled_from(list(dtypes)))
    lr_kind = draw(st.sampled_from(LR_KINDS if allow_callables else LR_KINDS[:-2]))
    lr = draw(st.sampled_from([0.001, 0.01, 0.1]))
    if lr_kind == "float":
        lr_value = lr
    elif lr_kind == "callable0":
        lr_value = lambda: lr * 0.5  # noqa: E731
    elif lr_kind == "callable1":
        lr_value = lambda step: lr / (1.0 + step)  # noqa: E731
    else:
        lr_value = schedule(lr_kind, lr)
    kw = dict(
        learning_rate=lr_value,
        beta_1=draw(st.sampled_from([0.9, 0.8, 0.5])),
        beta_2=draw(st.sampled_from([0.999, 0.99, 0.9])),
        epsilon=draw(st.sampled_from([1e-7, 1e-4])),
        amsgrad=draw(st.booleans()),
        weight_decay=draw(st.sampled_from([None, 0.004, 0.1])),
        use_ema=draw(st.booleans()),
        ema_momentum=draw(st.sampled_from([0.99, 0.5])),
        ema_overwrite_frequency=draw(st.sampled_from([None, 1, 2, 3])),
        loss_scale_factor=draw(st.sampled_from([None, 128.0, 100.0])),
        gradient_accumulation_steps=draw(st.sampled_from([None, None, 2, 3])),
    )
    clip_kind = draw(st.sampled_from([None, "clipnorm", "clipvalue", "global_clipnorm"]))
    if clip_kind:
        kw[clip_kind] = draw(st.sampled_from([0.05, 0.5, 3.0]))
    if allow_callables and draw(st.integers(0, 5)) == 0:
        b1 = kw["beta_1"]
        kw["beta_1"] = lambda: b1  # noqa: E731
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4))
    steps = draw(st.integers(4, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(kw=kw, dtype=dtype, shapes=shapes, steps=steps, seed=seed)


def data(config):
    rng = np.random.default_rng(config["seed"])
    dt = DTYPES[config["dtype"]]
    params = [rng.standard_normal(s).astype(dt) for s in config["shapes"]]
    grads = [[(rng.standard_normal(s) * 0.5).astype(dt) for s in config["shapes"]] for _ in range(config["steps"])]
    return params, grads


def tolerance(dtype: str) -> dict:
    return {"f32": dict(rtol=2e-5, atol=2e-6), "f16": dict(rtol=4e-3, atol=4e-3),
            "bf16": dict(rtol=3e-2, atol=3e-2)}[dtype]
