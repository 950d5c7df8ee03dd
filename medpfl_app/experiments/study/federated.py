"""In-process FedAvg over K sites on seeded phantoms, each update defended as the site's NVFlare filter does.

What is shared with the NVFlare jobs: the network (`build_seeded_network`, the job's seeded initialisation), the
site's local SGD (`medpfl_app.attacks.simulated_site.simulate_site_update`: BatchNorm in train mode, BN buffers in the
update), the defense objects the client filters wrap (`medpfl_app.defenses`, applied to the weight difference
under the ``net.`` prefix) and the ``medpfl_defenses`` meta the filters append. What is not: NVFlare's transport,
the Client API and the controller; FedAvg here is the unweighted mean of the received differences (equal site
sizes), as NVFlare's ``FedAvg`` with equal weights. Keys a defense withholds (``drop_bn_stats``) stay local to each
site (FedBN): the site keeps training them, the global model never receives them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medpfl_app.defenses import Defense
from medpfl_app.experiments.study.config import CellConfig, RunConfig, WeightInit

PREFIX = "net."
State = dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class SiteData:
    """One site's training pool (never leaves the site)."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True, eq=False)
class ReceivedUpdate:
    """One site update as the server received it, with the site's ground truth for its scorer."""

    site: int
    round: int
    update: dict[str, np.ndarray]
    global_weights: dict[str, np.ndarray]
    meta: dict[str, object]
    used_positions: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class FederatedRun:
    """The outcome of training: the server's global state, each site's kept-local keys and the received updates."""

    global_state: State
    local_states: tuple[State, ...]
    received: tuple[ReceivedUpdate, ...]


def site_pools(run: RunConfig) -> tuple[SiteData, ...]:
    """Each site's seeded phantoms (classes balanced; site ``k`` draws with seed ``(seed, k + 1)``)."""
    from medpfl_app.data.phantoms import generate_phantoms

    pools = []
    for k in range(run.sites):
        labels = [i % run.num_classes for i in range(run.train_per_site)]
        pixels = generate_phantoms(labels, seed=run.seed * 1000 + k + 1, image_size=run.image_size)
        pools.append(SiteData(torch.from_numpy(pixels)[:, None].float(), torch.tensor(labels)))
    return tuple(pools)


def validation_set(run: RunConfig) -> SiteData:
    """Held-out phantoms no site trains on."""
    from medpfl_app.data.phantoms import generate_phantoms

    labels = [i % run.num_classes for i in range(run.val_images)]
    pixels = generate_phantoms(labels, seed=run.seed * 1000 + 999, image_size=run.image_size)
    return SiteData(torch.from_numpy(pixels)[:, None].float(), torch.tensor(labels))


def initial_network(run: RunConfig, cell: CellConfig) -> nn.Module:
    """The initial global model: the job's seeded network, re-drawn U(−0.5, 0.5) for `WeightInit.UNIFORM`."""
    from medpfl_app.attacks.simulated_site import init_uniform_
    from medpfl_app.models.global_model import build_seeded_network

    net = build_seeded_network(
        cell.network,
        in_channels=1,
        num_classes=run.num_classes,
        image_size=run.image_size,
        seed=run.seed,
        dp_sgd=cell.dp_sgd,
    )
    return init_uniform_(net, seed=run.seed) if cell.init is WeightInit.UNIFORM else net


def used_positions(run: RunConfig, cell: CellConfig, site: int, round_index: int) -> tuple[int, ...]:
    """The pool positions a site trains on in a round: the next ``B × S`` images of its own seeded order.

    Each site walks its pool in its own shuffled order, so sites do not see the same class in the same round.
    """
    order = np.random.default_rng([run.seed, 7, site]).permutation(run.train_per_site)
    count = min(cell.batch_size * cell.local_steps, run.train_per_site)
    start = (round_index * cell.batch_size * cell.local_steps) % run.train_per_site
    return tuple(int(order[(start + j) % run.train_per_site]) for j in range(count))


def run_federation(
    run: RunConfig,
    cell: CellConfig,
    *,
    keep: Callable[[int, int], bool] = lambda site, rnd: False,
) -> FederatedRun:
    """Train ``run.rounds`` FedAvg rounds of ``cell`` and return the state and the updates ``keep`` selects."""
    net = initial_network(run, cell)
    global_state: State = {k: v.detach().clone() for k, v in net.state_dict().items()}
    local_states: list[State] = [{} for _ in range(run.sites)]
    defense = cell.defense.build(clip_norm=run.clip_norm)
    pools = site_pools(run)
    received: list[ReceivedUpdate] = []
    for rnd in range(run.rounds):
        updates = []
        for k, pool in enumerate(pools):
            update, start, meta, used = _site_round(net, global_state, local_states[k], pool, run, cell, (k, rnd))
            defended, meta = _defend(update, defense, meta, seed=(run.seed, k, rnd))
            _keep_withheld(local_states[k], update, defended, start)
            updates.append(defended)
            if keep(k, rnd):
                received.append(ReceivedUpdate(k, rnd, defended, _numpy(global_state), meta, used))
        global_state = _fedavg(global_state, updates)
    return FederatedRun(global_state, tuple(local_states), tuple(received))


def _site_round(
    net: nn.Module,
    global_state: State,
    local: State,
    pool: SiteData,
    run: RunConfig,
    cell: CellConfig,
    where: tuple[int, int],
) -> tuple[dict[str, np.ndarray], State, dict[str, object], tuple[int, ...]]:
    """One site's local training from the global model; returns (update, start state, meta, used positions)."""
    from medpfl_app.attacks import UpdateKind
    from medpfl_app.attacks.simulated_site import simulate_site_update

    start = {**global_state, **local}
    net.load_state_dict(start)
    if cell.dp_sgd:
        from medpfl_app.experiments.study.dp_sgd_site import dp_sgd_round

        update, used, facts = dp_sgd_round(net, pool.images, pool.labels, run, cell, (run.seed, *where))
    else:
        used = used_positions(run, cell, *where)
        site = simulate_site_update(
            net,
            pool.images[list(used)],
            pool.labels[list(used)],
            kind=UpdateKind.WEIGHT_DIFF,
            local_steps=cell.local_steps,
            learning_rate=run.learning_rate,
            batch_size=cell.batch_size,
        )
        update, facts = site.update, site.meta
    meta: dict[str, object] = {
        **facts,
        "network": cell.network,
        "image_size": run.image_size,
        "in_channels": 1,
        "num_classes": run.num_classes,
        "state_dict_prefix": PREFIX,
        "medpfl_defenses": [],
    }
    return {PREFIX + k: v.numpy() for k, v in update.items()}, start, meta, used


def _defend(
    update: dict[str, np.ndarray], defense: Defense | None, meta: dict[str, object], *, seed: tuple[int, int, int]
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    if defense is None:
        return update, meta
    # One generator per (run seed, site, round): different noise for every release, reproducible per cell.
    out, record = defense.apply(update, seed=np.random.default_rng(list(seed)))
    entry = {"defense": defense.key, "guarantee": str(defense.guarantee), "params": defense.params(), **record}
    return {k: np.asarray(v) for k, v in out.items()}, {**meta, "medpfl_defenses": [entry]}


def _keep_withheld(local: State, update: dict[str, np.ndarray], defended: dict[str, np.ndarray], start: State) -> None:
    """Keys the defense did not release stay at the site, updated by its own training (FedBN)."""
    for key in set(update) - set(defended):
        name = key.removeprefix(PREFIX)
        local[name] = start[name] + torch.as_tensor(update[key])


def _fedavg(global_state: State, updates: list[dict[str, np.ndarray]]) -> State:
    new = dict(global_state)
    for name, value in global_state.items():
        received = [u[PREFIX + name] for u in updates if PREFIX + name in u]
        if not received:
            continue
        mean = np.mean(np.stack([np.asarray(r, dtype=np.float64) for r in received]), axis=0)
        new[name] = (value.double() + torch.from_numpy(np.asarray(mean))).to(value.dtype)
    return new


def _numpy(state: State) -> dict[str, np.ndarray]:
    return {PREFIX + k: v.detach().numpy().copy() for k, v in state.items()}


def site_model(run: RunConfig, cell: CellConfig, fed: FederatedRun, site: int) -> nn.Module:
    """The model site ``site`` deploys: the global weights with its kept-local keys (FedBN)."""
    net = initial_network(run, cell)
    net.load_state_dict({**fed.global_state, **fed.local_states[site]})
    return net.eval()
