"""A malicious site controls its update's meta: every fact is validated before the audit spends anything on it."""

from __future__ import annotations

import math

import pytest

from medpfl_app.audit.facts import FactBounds, InvalidMeta, ModelSpec, validate_meta
from medpfl_app.errors import MedPFLError

GOOD = {
    "batch_size": 8,
    "local_steps": 4,
    "learning_rate": 0.05,
    "optimizer": "sgd",
    "num_train_images": 32,
    "network": "lenet_sigmoid",
    "image_size": 32,
    "in_channels": 1,
    "num_classes": 4,
    "filter_history": ["LaplaceNoiseFilter"],
    "medpfl_defenses": [{"defense": "laplace", "params": {"b": 0.1}}],
}
MODEL = ModelSpec("lenet_sigmoid", 32, 1, 4)


def test_honest_facts_pass_and_unknown_keys_are_dropped() -> None:
    """What an honest site sends survives unchanged; keys the audit does not know never reach a record."""
    checked = validate_meta({**GOOD, "secret_payload": "x" * 10_000, "__fl_meta__": {"a": 1}}, model=MODEL)
    assert {k: checked[k] for k in GOOD} == GOOD
    assert "secret_payload" not in checked and "__fl_meta__" not in checked


@pytest.mark.parametrize(
    ("bad", "names"),
    [
        ({"batch_size": 10**9}, "batch_size"),
        ({"batch_size": 64, "num_train_images": 32}, "exceeds"),
        ({"local_steps": 10**12}, "local_steps"),
        ({"image_size": 10**6}, "image_size"),
        ({"in_channels": 10**5}, "in_channels"),
        ({"num_classes": 10**9}, "num_classes"),
        ({"batch_size": float("nan")}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": "8"}, "batch_size"),
        ({"learning_rate": math.inf}, "learning_rate"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"bn_momentum": 7.0}, "bn_momentum"),
        ({"optimizer": "x" * 10_000}, "optimizer"),
        ({"optimizer": "magic"}, "optimizer"),
        ({"filter_history": ["f"] * 100_000}, "filter_history"),
        ({"medpfl_defenses": [{"epsilon_total": float("nan")}]}, "non-finite"),
        ({"medpfl_defenses": [{"x": {"y": {"z": {"w": {"v": {"u": 1}}}}}}]}, "nested"),
        ({"dp_sgd": "yes"}, "dp_sgd"),
        ({"bn_buffers_included": "true"}, "bn_buffers_included"),
    ],
)
def test_each_bad_fact_is_refused_by_name(bad, names) -> None:
    """Huge, non-finite, mistyped or inconsistent facts raise one `InvalidMeta` naming the fact."""
    with pytest.raises(InvalidMeta, match=names):
        validate_meta({**GOOD, **bad}, model=MODEL)


def test_the_model_comes_from_the_job_never_from_the_site() -> None:
    """With the job's model known, a site claiming another shape is refused; silent claims get the job's."""
    with pytest.raises(InvalidMeta, match="image_size"):
        validate_meta({**GOOD, "image_size": 512}, model=MODEL)
    quiet = {k: v for k, v in GOOD.items() if k not in ("network", "image_size", "in_channels", "num_classes")}
    checked = validate_meta(quiet, model=MODEL)
    assert (checked["network"], checked["image_size"], checked["in_channels"], checked["num_classes"]) == (
        "lenet_sigmoid",
        32,
        1,
        4,
    )


def test_a_non_mapping_meta_is_refused() -> None:
    with pytest.raises(InvalidMeta):
        validate_meta(["batch_size", 8], model=None)  # type: ignore[arg-type]


def test_bounds_are_configurable_and_model_spec_is_validated() -> None:
    with pytest.raises(InvalidMeta, match="batch_size"):
        validate_meta({"batch_size": 9}, model=None, bounds=FactBounds(max_batch_size=8))
    with pytest.raises(MedPFLError):
        ModelSpec.from_dict({"network": "lenet_sigmoid", "image_size": 10**7, "in_channels": 1, "num_classes": 4})
    with pytest.raises(MedPFLError):
        ModelSpec.from_dict({"network": "lenet_sigmoid"})
    assert ModelSpec.from_dict(None) is None
    assert ModelSpec.from_dict(MODEL.to_dict()) == MODEL
