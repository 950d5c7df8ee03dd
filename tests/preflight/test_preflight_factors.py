"""Risk factors from declared settings, the facts' arithmetic and the untrusted facts contract."""

from __future__ import annotations

import pytest

from medpfl_app.audit.preflight import (
    Factor,
    JobTraining,
    ProbeSetting,
    local_steps_per_round,
    risk_factors,
    site_risk_facts,
)
from medpfl_app.contracts.preflight import DeclaredDefense, SiteRiskFacts
from medpfl_app.errors import MedPFLError

JOB = JobTraining(network="small_cnn", num_classes=3, image_size=16)


def _factors(facts: SiteRiskFacts, *, batchnorm: bool = True) -> set[Factor]:
    return {f.factor for f in risk_factors(facts, ProbeSetting.of_site(JOB, facts), has_batchnorm=batchnorm)}


def test_counts_become_facts_without_data() -> None:
    facts = site_risk_facts("site-1", [0, 1, 7, 20], batch_size=4, local_epochs=2, max_steps=-1)

    assert (facts.num_train_images, facts.smallest_class, facts.single_image_classes) == (28, 1, 1)
    assert facts.local_steps == 2 * 7
    assert set(facts.to_json()) == {
        "schema",
        "site",
        "num_train_images",
        "smallest_class",
        "single_image_classes",
        "batch_size",
        "local_steps",
        "dp_sgd_noise_multiplier",
        "scope_defenses",
    }


@pytest.mark.parametrize(
    ("images", "batch", "epochs", "cap", "expected"),
    [(32, 8, 1, -1, 4), (33, 8, 1, -1, 5), (32, 8, 3, 5, 5), (3, 1, 1, 1, 1)],
)
def test_local_steps_per_round(images: int, batch: int, epochs: int, cap: int, expected: int) -> None:
    assert local_steps_per_round(images, batch, epochs, cap) == expected


def test_a_batch_of_one_with_no_defense_and_shared_bn_has_every_factor() -> None:
    facts = site_risk_facts("site-1", [1, 5, 5], batch_size=1, local_epochs=1, max_steps=1)

    assert _factors(facts) == {
        Factor.BATCH_OF_ONE,
        Factor.ONE_LOCAL_STEP,
        Factor.SINGLE_IMAGE_CLASS,
        Factor.BN_STATS_SHARED,
        Factor.NO_DEFENSE,
    }


def test_defenses_remove_their_factors() -> None:
    defenses = (
        DeclaredDefense("drop_bn_stats"),
        DeclaredDefense("client_dp", {"clip_norm": 1.0, "noise_multiplier": 1.0}),
    )
    facts = site_risk_facts("site-1", [40, 40, 40], batch_size=16, local_epochs=1, scope_defenses=defenses)

    assert _factors(facts) == set()


def test_heuristic_noise_is_named_as_such() -> None:
    facts = site_risk_facts(
        "site-1",
        [40, 40, 40],
        batch_size=16,
        local_epochs=1,
        scope_defenses=(DeclaredDefense("laplace_noise", {"scale": 0.01}),),
    )

    assert _factors(facts, batchnorm=False) == {Factor.HEURISTIC_DEFENSE_ONLY}


def test_job_and_scope_defenses_combine_in_site_order() -> None:
    job = JobTraining(
        network="small_cnn", job_defenses=(DeclaredDefense("client_dp", {"clip_norm": 1.0, "noise_multiplier": 1.0}),)
    )
    facts = site_risk_facts(
        "s", [20, 20], batch_size=4, local_epochs=1, scope_defenses=(DeclaredDefense("drop_bn_stats"),)
    )

    setting = ProbeSetting.of_site(job, facts)

    assert setting.defense_keys == ("drop_bn_stats", "client_dp")
    assert setting.formally_protected and setting.bn_local and setting.unmodelled == ()


def test_facts_round_trip() -> None:
    facts = site_risk_facts(
        "site-1", [3, 4], batch_size=2, local_epochs=1, scope_defenses=(DeclaredDefense("top_k", {"fraction": 0.1}),)
    )

    assert SiteRiskFacts.from_json(facts.to_json()) == facts


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"schema": "medpfl.preflight_facts/9"}, "schema"),
        ({"extra": 1}, "unknown keys"),
        ({"batch_size": -1}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"num_train_images": 10**12}, "num_train_images"),
        ({"local_steps": 0}, "at least 1"),
        ({"site": "site\x1b[31m"}, "printable"),
        ({"site": "s" * 200}, "printable"),
        ({"dp_sgd_noise_multiplier": float("nan")}, "dp_sgd_noise_multiplier"),
        ({"scope_defenses": [{"key": "x"}] * 17}, "at most"),
        ({"scope_defenses": [{"key": "x", "params": {"a": "text"}}]}, "finite number"),
        ({"scope_defenses": [{"key": "x", "params": {"a": float("inf")}}]}, "finite number"),
    ],
)
def test_untrusted_facts_are_refused_with_one_clear_error(change: dict, words: str) -> None:
    values = site_risk_facts("site-1", [3, 4], batch_size=2, local_epochs=1).to_json()
    values.update(change)

    with pytest.raises(MedPFLError, match=words):
        SiteRiskFacts.from_json(values)


def test_facts_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(MedPFLError, match="JSON object"):
        SiteRiskFacts.from_json(["site-1"])
