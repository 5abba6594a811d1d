"""adamgen.spec.AdamSpec against real keras.optimizers.Adam (JAX backend)."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import copy  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import warnings  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from adamgen import schedules as S  # noqa: E402
from adamgen.spec import AdamSpec  # noqa: E402

KS = keras.optimizers.schedules


def keras_adam(*args, **kwargs):
    kwargs.setdefault("name", "adam")  # Keras auto-numbers unnamed optimizers (adam, adam_1, ...)
    return keras.optimizers.Adam(*args, **kwargs)


def lr_fn():
    return 0.01


# ------------------------------------------------------------------ §11 validation rows

REJECTED = [
    {"learning_rate": 1},
    {"learning_rate": np.float32(0.1)},
    {"learning_rate": "0.1"},
    {"learning_rate": None},
    {"learning_rate": jnp.array(0.1)},
    {"clipnorm": 1.0, "clipvalue": 1.0},
    {"clipnorm": 0.0, "clipvalue": 0.0},
    {"clipnorm": 1.0, "clipvalue": 1.0, "global_clipnorm": 2.0},
    {"global_clipnorm": -1.0, "clipvalue": 1.0},
    {"use_ema": True, "ema_momentum": 1.5},
    {"use_ema": True, "ema_momentum": -0.1},
    {"use_ema": True, "ema_overwrite_frequency": -1},
    {"use_ema": True, "ema_overwrite_frequency": 2.0},
    {"gradient_accumulation_steps": 1},
    {"gradient_accumulation_steps": -2},
    {"foo": 1},
    {"foo": 1, "bar": "x"},
    # Keras' check order: accumulation, EMA, clipping, then the learning rate.
    {"gradient_accumulation_steps": 1, "clipnorm": 1.0, "clipvalue": 1.0, "learning_rate": 1},
    {"use_ema": True, "ema_momentum": 2.0, "clipnorm": 1.0, "clipvalue": 1.0},
    {"clipnorm": 1.0, "clipvalue": 1.0, "learning_rate": 1},
    {"use_ema": True, "ema_momentum": None},  # TypeError from `None > 1`, like Keras
    {"gradient_accumulation_steps": "3"},  # TypeError from `'3' >= 2`, like Keras
    {"name": "a/b"},
    {"name": 5},
]


@pytest.mark.parametrize("kwargs", REJECTED, ids=[str(k) for k in REJECTED])
def test_rejections_match_keras(kwargs):
    with pytest.raises(Exception) as theirs:
        keras_adam(**kwargs)
    with pytest.raises(Exception) as ours:
        AdamSpec(**kwargs)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


def test_decay_warns_like_keras_and_is_ignored():
    with pytest.warns(UserWarning) as theirs:
        kcfg = keras_adam(decay=0.1).get_config()
    with pytest.warns(UserWarning) as ours:
        spec = AdamSpec(decay=0.1)
    user = lambda record: [str(w.message) for w in record if w.category is UserWarning]  # noqa: E731
    assert user(ours) == user(theirs)
    assert str(ours[0].message) == "Argument `decay` is no longer supported and will be ignored."
    assert spec == AdamSpec() and spec.get_config() == kcfg
    with pytest.raises(ValueError, match=r"^Argument\(s\) not recognized: \{'foo': 1\}$"), pytest.warns(UserWarning):
        AdamSpec(decay=0.1, foo=1)


def test_e1_message_exact():
    with pytest.raises(ValueError) as exc:
        AdamSpec(learning_rate=1)
    assert str(exc.value) == (
        "Argument `learning_rate` should be float, or an instance of LearningRateSchedule, or a callable "
        "(that takes in the current iteration value and returns the corresponding learning rate value). "
        "Received instead: learning_rate=1"
    )


ACCEPTED = [
    ({"learning_rate": -0.1}, None),
    ({"learning_rate": 0.0}, None),
    ({"learning_rate": np.float64(0.1)}, None),
    ({"beta_1": 1.5, "beta_2": 1.0}, None),
    ({"beta_1": -0.1}, None),
    ({"epsilon": -1.0}, None),
    ({"epsilon": 0}, "epsilon"),
    ({"amsgrad": "yes"}, None),
    ({"weight_decay": -0.1}, None),
    ({"clipnorm": 0.0}, "clipnorm"),
    ({"clipvalue": -1.0}, "clipvalue"),
    ({"global_clipnorm": 0.0}, "global_clipnorm"),
    ({"use_ema": True, "ema_momentum": 0.0}, None),
    ({"use_ema": True, "ema_momentum": 1.0}, None),
    ({"use_ema": False, "ema_momentum": 1.5}, None),
    ({"use_ema": True, "ema_overwrite_frequency": 0}, "ema_overwrite_frequency"),
    ({"use_ema": False, "ema_overwrite_frequency": -1}, None),
    ({"gradient_accumulation_steps": 0}, None),
    ({"loss_scale_factor": 0.0}, "loss_scale_factor"),
    ({"loss_scale_factor": -1.0}, "loss_scale_factor"),
]


@pytest.mark.parametrize("kwargs,warned_field", ACCEPTED, ids=[str(k) for k, _ in ACCEPTED])
def test_accepted_like_keras_with_warnings(kwargs, warned_field):
    kcfg = keras_adam(**kwargs).get_config()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = AdamSpec(**kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if warned_field is None:
        assert messages == []
    else:
        assert len(messages) == 1 and warned_field in messages[0], messages
    assert spec.get_config() == kcfg


def test_non_integer_accumulation_is_rejected_unlike_keras():
    keras_adam(gradient_accumulation_steps=2.5)  # Keras accepts it (odd results)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps.*integer >= 2"):
        AdamSpec(gradient_accumulation_steps=2.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"beta_1": "0.9"}, {"epsilon": None}, {"weight_decay": "0.1"}, {"clipnorm": "1"}, {"name": 3}],
)
def test_uncompilable_types_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AdamSpec(**kwargs)


# ------------------------------------------------------------------ get_config / from_config

SCHEDULE_ARGS = [
    ("ExponentialDecay", (0.1, 7, 0.9), {"staircase": True}),
    ("PiecewiseConstantDecay", ([3, 10], [0.1, 0.05, 0.01]), {}),
    ("PolynomialDecay", (0.1, 10, 0.001, 0.5), {"cycle": True}),
    ("InverseTimeDecay", (0.1, 5, 0.5), {}),
    ("CosineDecay", (0.01, 10, 0.1), {"warmup_target": 0.1, "warmup_steps": 3}),
    ("CosineDecayRestarts", (0.1, 5, 1.5, 0.9, 0.01), {}),
]
NON_DEFAULT = {
    "name": "my_adam", "weight_decay": 0.01, "global_clipnorm": 1.0, "use_ema": True,
    "ema_momentum": 0.95, "ema_overwrite_frequency": 5, "loss_scale_factor": 128.0,
    "gradient_accumulation_steps": 3, "beta_1": 0.85, "beta_2": 0.995, "epsilon": 1e-6, "amsgrad": True,
}
CONFIGS = [
    {},
    {"learning_rate": 0.1},
    {"learning_rate": 0.1, **NON_DEFAULT},
    {"learning_rate": 3e-4, "clipnorm": 0.5, "amsgrad": 1},
    {"clipvalue": 2.0, "use_ema": True},
]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_get_config_matches_keras(kwargs):
    kcfg = keras_adam(**kwargs).get_config()
    ours = AdamSpec(**kwargs).get_config()
    assert ours == kcfg
    assert list(ours) == list(kcfg)


def test_default_get_config_literal():
    assert AdamSpec().get_config() == {
        "name": "adam", "learning_rate": 0.0010000000474974513, "weight_decay": None, "clipnorm": None,
        "global_clipnorm": None, "clipvalue": None, "use_ema": False, "ema_momentum": 0.99,
        "ema_overwrite_frequency": None, "loss_scale_factor": None, "gradient_accumulation_steps": None,
        "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07, "amsgrad": False,
    }


@pytest.mark.parametrize("name,args,kwargs", SCHEDULE_ARGS, ids=[s[0] for s in SCHEDULE_ARGS])
def test_schedule_lr_config_matches_keras_and_round_trips(name, args, kwargs):
    theirs = getattr(KS, name)(*args, **kwargs)
    ours = getattr(S, name)(*args, **kwargs)
    kcfg = keras_adam(learning_rate=theirs, **NON_DEFAULT).get_config()
    for lr in (ours, theirs, KS.serialize(theirs)):  # adamgen object, live Keras object, dict
        spec = AdamSpec(learning_rate=lr, **NON_DEFAULT)
        assert spec.lr_kind == "schedule" and spec.learning_rate == ours
        assert spec.get_config() == kcfg
    rebuilt = keras.optimizers.Adam.from_config(copy.deepcopy(spec.get_config()))
    assert rebuilt.get_config() == kcfg


def test_callable_lr_config_matches_keras():
    kcfg = keras_adam(learning_rate=lr_fn).get_config()
    assert AdamSpec(learning_rate=lr_fn).get_config() == kcfg
    assert kcfg["learning_rate"] == {
        "module": "builtins", "class_name": "function", "config": "lr_fn", "registered_name": "function",
    }


@pytest.mark.parametrize("kwargs", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_keras_from_config_accepts_ours(kwargs):
    spec = AdamSpec(**kwargs)
    rebuilt = keras.optimizers.Adam.from_config(copy.deepcopy(spec.get_config()))
    assert rebuilt.get_config() == spec.get_config()


@pytest.mark.parametrize("kwargs", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_from_keras_config_does_not_mutate(kwargs):
    opt = keras_adam(learning_rate=KS.CosineDecay(0.1, 10), **{k: v for k, v in kwargs.items() if k != "learning_rate"})
    for cfg in (opt.get_config(), keras.optimizers.serialize(opt)):
        before = copy.deepcopy(cfg)
        spec = AdamSpec.from_keras_config(cfg)
        assert cfg == before
        assert spec.get_config() == opt.get_config()
        assert spec.learning_rate == S.CosineDecay(0.1, 10)


def test_from_keras_config_after_keras_from_config_mutated_it():
    cfg = keras_adam(learning_rate=KS.ExponentialDecay(0.1, 5, 0.5)).get_config()
    keras.optimizers.Adam.from_config(cfg)  # Keras replaces cfg["learning_rate"] with the object
    assert not isinstance(cfg["learning_rate"], dict)
    assert AdamSpec.from_keras_config(cfg).learning_rate == S.ExponentialDecay(0.1, 5, 0.5)


def test_from_keras_config_rejects_other_optimizers():
    with pytest.raises(ValueError, match="Adam"):
        AdamSpec.from_keras_config(keras.optimizers.serialize(keras.optimizers.SGD()))
    with pytest.raises(ValueError, match="callable"):
        AdamSpec.from_keras_config(keras_adam(learning_rate=lr_fn).get_config())


# ------------------------------------------------------------------ JSON, hashing, identity


@pytest.mark.parametrize("kwargs", CONFIGS + [{"learning_rate": S.CosineDecayRestarts(0.1, 5), "amsgrad": "yes"}])
def test_json_round_trip(kwargs):
    spec = AdamSpec(**kwargs)
    text = spec.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    back = AdamSpec.from_json(text)
    assert back == spec and hash(back) == hash(spec)
    assert back.to_json() == text and back.content_hash() == spec.content_hash()
    assert back.get_config() == spec.get_config()


def test_content_hash_stable_and_sensitive():
    a, b = AdamSpec(learning_rate=0.01, amsgrad=True), AdamSpec(learning_rate=0.01, amsgrad=True)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    h = a.content_hash()
    assert h == b.content_hash() and len(h) == 16 and int(h, 16) >= 0
    changes = [
        {"learning_rate": 0.02}, {"learning_rate": S.ExponentialDecay(0.01, 5, 0.9)}, {"beta_1": 0.8},
        {"beta_2": 0.99}, {"epsilon": 1e-8}, {"amsgrad": False}, {"weight_decay": 0.1}, {"clipnorm": 1.0},
        {"clipvalue": 1.0}, {"global_clipnorm": 1.0}, {"use_ema": True}, {"ema_momentum": 0.9},
        {"ema_overwrite_frequency": 3}, {"loss_scale_factor": 4.0}, {"gradient_accumulation_steps": 2},
        {"name": "other"},
    ]
    hashes = {h}
    for change in changes:
        changed = a.replace(**change)
        assert changed != a
        assert changed.content_hash() != h, change
        hashes.add(changed.content_hash())
    assert len(hashes) == len(changes) + 1


def test_callables_accepted_but_not_serializable():
    spec = AdamSpec(learning_rate=lambda: 0.01, beta_1=lambda: 0.9, beta_2=lambda: 0.999, epsilon=lambda: 1e-7)
    assert spec.lr_kind == "callable" and spec.lr_callable_arity == 0
    assert AdamSpec(learning_rate=lambda step: 0.1 / (1 + step)).lr_callable_arity == 1
    with pytest.raises(ValueError, match="learning_rate"):
        spec.to_json()
    with pytest.raises(ValueError, match="beta_1"):
        AdamSpec(beta_1=lambda: 0.9).content_hash()
    with pytest.raises(ValueError, match="epsilon"):
        AdamSpec(epsilon=lambda: 1e-7).to_json()
    assert hash(spec) == hash(spec.replace())  # callables hash by identity
    with pytest.raises(ValueError, match="learning_rate"):
        AdamSpec(learning_rate=lambda a, b: 0.1)
    with pytest.raises(ValueError, match="beta_2"):
        AdamSpec(beta_2=lambda step: 0.999)


def test_normalized_views():
    assert AdamSpec().lr_kind == "float" and AdamSpec().lr_callable_arity is None
    assert AdamSpec(gradient_accumulation_steps=0).accumulation_steps is None
    assert AdamSpec(gradient_accumulation_steps=3).accumulation_steps == 3
    assert AdamSpec().clip is None
    with pytest.warns(UserWarning):
        assert AdamSpec(clipnorm=0.0).clip is None
    assert AdamSpec(clipvalue=0.5).clip == ("clipvalue", 0.5)
    assert AdamSpec(global_clipnorm=2).clip == ("global_clipnorm", 2.0)
    assert AdamSpec(ema_overwrite_frequency=5).ema_overwrite is None
    assert AdamSpec(use_ema=True).ema_overwrite is None
    assert AdamSpec(use_ema=True, ema_overwrite_frequency=5).ema_overwrite == 5
    with pytest.warns(UserWarning, match="ema_overwrite_frequency"):
        assert AdamSpec(use_ema=True, ema_overwrite_frequency=0).ema_overwrite == 0
    spec = AdamSpec(amsgrad="yes")
    assert spec.amsgrad is True and spec.get_config()["amsgrad"] == "yes"
    assert spec != AdamSpec(amsgrad=True)


def test_check_param_dtype():
    spec = AdamSpec()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spec.check_param_dtype("f32") == [] and spec.check_param_dtype("f16") == []
    with pytest.warns(UserWarning, match="beta_2.*bf16.*never move"):
        spec.check_param_dtype("bf16")
    with pytest.warns(UserWarning, match="beta_2"):
        AdamSpec(beta_2=0.9999).check_param_dtype("f16")
    with pytest.warns(UserWarning, match="epsilon"):
        AdamSpec(epsilon=1e-9).check_param_dtype("f16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AdamSpec(beta_2=0.99).check_param_dtype("bf16") == []
    with pytest.raises(ValueError, match="allowed"):
        spec.check_param_dtype("f64")


def test_immutable_replace_repr_pickle():
    spec = AdamSpec(amsgrad=True)
    with pytest.raises(AttributeError):
        spec.amsgrad = False
    with pytest.raises(AttributeError):
        spec.new_field = 1
    assert spec.replace(amsgrad=False) == AdamSpec()
    with pytest.raises(ValueError, match="not recognized"):
        spec.replace(foo=1)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        spec.replace(gradient_accumulation_steps=1)
    assert repr(AdamSpec()) == "AdamSpec()"
    assert repr(spec) == "AdamSpec(amsgrad=True)"
    assert "CosineDecay" in repr(AdamSpec(learning_rate=S.CosineDecay(0.1, 10)))
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) is spec
    assert AdamSpec(0.01, 0.8) == AdamSpec(learning_rate=0.01, beta_1=0.8)  # Keras' positional order
