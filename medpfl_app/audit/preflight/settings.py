"""What the server knows of a job before round 1, and what one site's probe simulates.

`JobTraining` comes from the job itself (the site script's arguments and the job-level defense filters); a site's
`medpfl_app.contracts.preflight.SiteRiskFacts` add its batch size, local steps, image counts and privacy-scope
defenses. `ProbeSetting` is the two combined: the round the probe attack simulates on synthetic images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from medpfl_app.contracts.preflight import DeclaredDefense, SiteRiskFacts
from medpfl_app.errors import MedPFLError

#: Defense keys that carry a formal (ε, δ) guarantee on the update.
FORMAL_DEFENSES = frozenset({"client_dp"})
#: Defense keys that keep BatchNorm statistics at the site.
BN_LOCAL_DEFENSES = frozenset({"drop_bn_stats"})


@dataclass(frozen=True)
class JobTraining:
    """The job's model and training settings, as every site runs them.

    Attributes:
        network: Registered network name.
        in_channels: Image channels.
        num_classes: Classes.
        image_size: Square input size.
        learning_rate: Local learning rate.
        job_defenses: Job-level client result filters on ``train`` (every site applies them), in chain order.
    """

    network: str
    in_channels: int = 1
    num_classes: int = 4
    image_size: int = 32
    learning_rate: float = 0.01
    job_defenses: tuple[DeclaredDefense, ...] = ()

    def __post_init__(self) -> None:
        from medpfl_app.models.networks import NETWORKS

        if self.network not in NETWORKS:
            raise MedPFLError(f"unknown network {self.network!r}", fix=f"use one of: {', '.join(NETWORKS.names())}")
        if self.image_size < 8 or self.in_channels < 1 or self.num_classes < 2 or not self.learning_rate > 0:
            raise MedPFLError(
                "the job's training settings are out of range (image_size >= 8, in_channels >= 1, "
                f"num_classes >= 2, learning_rate > 0): {self}",
                fix="export the job again with `medpfl jobs export`",
            )


@dataclass(frozen=True)
class ProbeSetting:
    """One simulated site round: the job's model, the site's batch and steps, every defense it applies.

    Attributes:
        job: The job's training settings.
        batch_size: Images per local step.
        local_steps: Local steps per round.
        distinct_images: Images the steps cycle through (at most the site's training images).
        defenses: Job-level then site-scope defenses, in the order the site applies them (site scope first).
        dp_sgd_noise_multiplier: Sample-level DP-SGD at the site (0: off); the probe does not simulate it.
    """

    job: JobTraining
    batch_size: int
    local_steps: int
    distinct_images: int
    defenses: tuple[DeclaredDefense, ...] = ()
    dp_sgd_noise_multiplier: float = 0.0

    @classmethod
    def of_site(cls, job: JobTraining, facts: SiteRiskFacts) -> ProbeSetting:
        """The site's round as it declared it (NVFlare runs site-scope filters before the job's)."""
        return cls(
            job=job,
            batch_size=facts.batch_size,
            local_steps=facts.local_steps,
            distinct_images=max(1, min(facts.num_train_images, facts.batch_size * facts.local_steps)),
            defenses=facts.scope_defenses + job.job_defenses,
            dp_sgd_noise_multiplier=facts.dp_sgd_noise_multiplier,
        )

    @property
    def defense_keys(self) -> tuple[str, ...]:
        return tuple(defense.key for defense in self.defenses)

    @property
    def formally_protected(self) -> bool:
        """A formal (ε, δ) guarantee covers the update (client-level DP filter or sample-level DP-SGD)."""
        return self.dp_sgd_noise_multiplier > 0 or bool(FORMAL_DEFENSES & set(self.defense_keys))

    @property
    def bn_local(self) -> bool:
        return bool(BN_LOCAL_DEFENSES & set(self.defense_keys))

    @property
    def unmodelled(self) -> tuple[str, ...]:
        """Defenses the probe cannot apply (filters MedPFL does not know), by name."""
        from medpfl_app.defenses import DEFENSES

        known = set(DEFENSES.names())
        return tuple(key for key in self.defense_keys if key not in known)

    def with_batch_size(self, batch_size: int, available_images: int) -> ProbeSetting:
        return replace(
            self,
            batch_size=batch_size,
            distinct_images=max(1, min(available_images, batch_size * self.local_steps)),
        )

    def with_defense(self, defense: DeclaredDefense, *, first: bool = False) -> ProbeSetting:
        defenses = (defense, *self.defenses) if first else (*self.defenses, defense)
        return replace(self, defenses=defenses)


def network_has_batchnorm(job: JobTraining) -> bool:
    """Whether the job's network carries BatchNorm running statistics (which leave the site with the update)."""
    from torch import nn

    from medpfl_app.models.global_model import build_seeded_network

    net = build_seeded_network(
        job.network,
        in_channels=job.in_channels,
        num_classes=job.num_classes,
        image_size=job.image_size,
        seed=0,
        dp_sgd=False,
    )
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in net.modules())
