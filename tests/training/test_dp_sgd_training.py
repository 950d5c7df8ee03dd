"""Sample-level DP-SGD inside Lightning: GroupNorm model shared with the server, ε accumulating over FL rounds."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from nvflare.app_opt.lightning.callbacks import RestoreState
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medpfl_app.data import DataConfig, generate_demo_dataset, write_site_data_config
from medpfl_app.defenses.dp_sgd import DPSGDConfig
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.site.client import _prepare, build_arg_parser, dp_ledger_path, dp_sgd_config
from medpfl_app.training.facts import FL_META_ATTRIBUTE, TrainingFactsCallback
from medpfl_app.training.lightning_module import ImageClassifier
from medpfl_app.training.trainer import build_site_trainer

# Opacus' per-sample hooks on a first layer whose input needs no gradient: expected, harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")


class _ToyImages(Dataset):
    """Dict samples like the site loaders': ``{"image": FloatTensor[1, 16, 16], "label": LongTensor}``."""

    def __init__(self, count: int, seed: int = 0) -> None:
        self.images = torch.rand(count, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
        self.labels = torch.arange(count) % 2

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


def _classifier(dp_sgd: bool, **kwargs: Any) -> ImageClassifier:
    args = {"network": "small_cnn", "num_classes": 2, "image_size": 16, "learning_rate": 0.05, "optimizer": "sgd"}
    return ImageClassifier(**{**args, **kwargs}, dp_sgd=dp_sgd)


def _trainer(callbacks: list) -> pl.Trainer:
    # RestoreState is what flare.patch adds besides FLCallback: it reloads the optimizer state at every fit.
    return build_site_trainer(max_epochs=1, callbacks=[*callbacks, RestoreState()])


def _assert_plain_json(value: Any) -> None:
    """Only JSON builtins, recursively (no tensors, numpy scalars or TorchVersion strings)."""
    if isinstance(value, dict):
        assert all(type(key) is str for key in value)
        for item in value.values():
            _assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain_json(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), f"{value!r} is a {type(value).__name__}"


def test_dp_model_has_no_batchnorm_and_matches_the_server_model() -> None:
    """dp_sgd=True swaps BN for GroupNorm at construction; a second instance (the server's) has equal keys/values."""
    site, server = _classifier(True), _classifier(True)
    assert site.dp_sgd is True and server.hparams["dp_sgd"] is True
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in site.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in site.modules())
    site_state, server_state = site.state_dict(), server.state_dict()
    assert list(site_state) == list(server_state)
    assert all(torch.equal(site_state[key], server_state[key]) for key in site_state)
    assert not any("running_" in key or "num_batches_tracked" in key for key in site_state)
    plain = _classifier(False).state_dict()
    assert any("running_mean" in key for key in plain)  # the plain model does carry BN statistics
    assert {k for k in plain if "running_" not in k and "num_batches" not in k} == set(site_state)


def test_dp_sgd_over_two_rounds_accumulates_epsilon_in_the_facts() -> None:
    """Two validate+fit rounds with new global weights loaded between: ε > 0, then larger; the steps add up."""
    pl.seed_everything(0, verbose=False)
    module, server = _classifier(True), _classifier(True, seed=5)
    loader = module.enable_dp_sgd(DataLoader(_ToyImages(16), batch_size=4), DPSGDConfig(1.0, 1.0, delta=1e-5))
    val_loader = DataLoader(_ToyImages(8, seed=1), batch_size=8)
    facts = TrainingFactsCallback(num_train_images=16, configured_batch_size=4, local_epochs=1)
    trainer = _trainer([facts])

    metrics = trainer.validate(module, dataloaders=val_loader, verbose=False)[0]
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader)
    first = getattr(module, FL_META_ATTRIBUTE)
    # What FLCallback does at the next round's start: load the new global model in place, allow one more epoch.
    module.load_state_dict(server.state_dict(), strict=True)
    global_weights = {key: value.clone() for key, value in module.state_dict().items()}
    trainer.fit_loop.max_epochs += 1
    trainer.validate(module, dataloaders=val_loader, verbose=False)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader)
    second = getattr(module, FL_META_ATTRIBUTE)

    assert 0.0 <= metrics["accuracy"] <= 1.0
    json.dumps(second)
    _assert_plain_json(first)
    _assert_plain_json(second)
    dp_first, dp_second = first["dp_sgd"], second["dp_sgd"]
    assert first["local_steps"] == second["local_steps"] == 4  # Poisson loader: 1 / sample_rate steps per epoch
    assert dp_first["steps_total"] == 4 and dp_second["steps_total"] == 8  # every Lightning step went through Opacus
    assert 0.0 < dp_first["epsilon"] < dp_second["epsilon"]
    reference = RDPAccountant()
    reference.history = [(1.0, 0.25, 8)]
    assert dp_second["epsilon"] == pytest.approx(reference.get_epsilon(delta=1e-5))
    assert {key: dp_second[key] for key in ("noise_multiplier", "max_grad_norm", "delta", "accountant")} == {
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        "accountant": "rdp",
    }
    assert dp_second["guarantee"] == "(ε, δ)-DP at sample level" and dp_second["sample_rate"] == 0.25
    assert second["optimizer"] == "sgd" and second["learning_rate"] == pytest.approx(0.05)
    assert second["bn_buffers_included"] is False
    trained = module.state_dict()
    assert list(trained) == list(server.state_dict())
    assert all(torch.isfinite(value).all() for value in trained.values())
    assert any(not torch.equal(trained[key], global_weights[key]) for key in trained)  # round 2 trained the new model


def test_without_dp_sgd_the_facts_say_none() -> None:
    """A plain fit reports ``dp_sgd: None`` and keeps the BN facts."""
    module = _classifier(False)
    facts = TrainingFactsCallback(num_train_images=8, configured_batch_size=4, local_epochs=1)
    _trainer([facts]).fit(module, train_dataloaders=DataLoader(_ToyImages(8), batch_size=4))
    meta = getattr(module, FL_META_ATTRIBUTE)
    assert "dp_sgd" in meta and meta["dp_sgd"] is None
    assert meta["bn_buffers_included"] is True and meta["optimizer"] == "sgd"


def test_an_empty_poisson_batch_is_a_noise_only_step() -> None:
    """An empty draw (even the very first) keeps the dict structure, steps the accountant and adds only noise."""
    module = _classifier(True)
    loader = module.enable_dp_sgd(DataLoader(_ToyImages(8), batch_size=4), DPSGDConfig(1.0, 1.0))
    empty = loader.collate_fn([])
    assert empty["image"].shape == (0, 1, 16, 16) and empty["label"].shape == (0,)
    before = {key: value.clone() for key, value in module.state_dict().items()}
    module.train()
    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    loss = module.training_step(empty, 0)
    loss.backward()
    optimizer.step()
    assert loss.item() == 0.0
    assert module.dp_session is not None
    assert module.dp_session.privacy_engine.accountant.history == [(1.0, 0.5, 1)]
    after = module.state_dict()
    assert all(torch.isfinite(value).all() for value in after.values())
    assert any(not torch.equal(after[key], before[key]) for key in after)  # the Gaussian noise moved the weights


def test_dp_noise_does_not_follow_the_job_seed() -> None:
    """Same job seed, same batch, same weights: the DP noise still differs, since the server knows that seed."""
    batch = next(iter(DataLoader(_ToyImages(8), batch_size=8)))
    results = []
    for _ in range(2):
        pl.seed_everything(0, verbose=False)
        module = _classifier(True)
        module.enable_dp_sgd(DataLoader(_ToyImages(8), batch_size=4), DPSGDConfig(1.0, 1.0))
        module.train()
        optimizer = module.configure_optimizers()
        optimizer.zero_grad()
        module.loss(module(batch["image"]), batch["label"]).backward()
        optimizer.step()
        results.append(module.state_dict())
    assert all(torch.isfinite(value).all() for value in results[0].values())
    assert not torch.equal(results[0]["net.classifier.weight"], results[1]["net.classifier.weight"])


def test_dp_sgd_refuses_a_plain_model_a_second_attach_and_another_loader() -> None:
    """Each misuse that would void or restart the guarantee is one MedPFLError."""
    config = DPSGDConfig(1.0, 1.0)
    plain_loader = DataLoader(_ToyImages(8), batch_size=4)
    with pytest.raises(MedPFLError, match="dp_sgd=False"):
        _classifier(False).enable_dp_sgd(plain_loader, config)
    module = _classifier(True)
    module.enable_dp_sgd(plain_loader, config)
    with pytest.raises(MedPFLError, match="already attached"):
        module.enable_dp_sgd(plain_loader, config)
    with pytest.raises(MedPFLError, match="another loader"):
        _trainer([]).fit(module, train_dataloaders=plain_loader)
    assert module.dp_session is not None and module.dp_session.privacy_engine.accountant.history == []
    with pytest.raises(MedPFLError, match="dp_sgd"):
        ImageClassifier(dp_sgd="yes")  # type: ignore[arg-type]


def test_site_arguments_turn_dp_sgd_on_only_with_positive_noise() -> None:
    """No DP flags → off; the flags the job spec passes → the same DPSGDConfig."""
    parser = build_arg_parser()
    assert dp_sgd_config(parser.parse_args([])) is None
    args = parser.parse_args(["--dp_noise_multiplier", "1.1", "--dp_max_grad_norm", "0.5", "--dp_delta", "1e-06"])
    config = dp_sgd_config(args)
    assert config == DPSGDConfig(noise_multiplier=1.1, max_grad_norm=0.5, delta=1e-6)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--dp_noise_multiplier", "-1"], "dp_noise_multiplier"),
        (["--dp_noise_multiplier", "nan"], "dp_noise_multiplier"),
        (["--dp_noise_multiplier", "1", "--dp_max_grad_norm", "0"], "max_grad_norm"),
        (["--dp_noise_multiplier", "1", "--dp_delta", "1.5"], "delta"),
    ],
)
def test_bad_dp_arguments_are_one_clear_error(argv: list[str], fragment: str) -> None:
    with pytest.raises(MedPFLError, match=fragment):
        dp_sgd_config(build_arg_parser().parse_args(argv))


def test_site_entry_prepares_dp_sgd_training_on_site_data(tmp_path, monkeypatch) -> None:
    """`_prepare` with the job's DP flags on real site files: GroupNorm model, Poisson loader, ε in the facts."""
    demo = generate_demo_dataset(tmp_path / "data", num_sites=1, train_per_site=8, val_per_site=4, image_size=16)
    workspace = tmp_path / "site-1"
    write_site_data_config(
        workspace / "local" / "medpfl_data.json",
        demo.site_datalists["site-1"],
        DataConfig(image_size=16, batch_size=4, val_batch_size=4),
    )
    monkeypatch.setenv("MEDPFL_SITE_WORKSPACE", str(workspace))
    argv = ["--dp_noise_multiplier", "1.0", "--dp_max_grad_norm", "1.0", "--dp_delta", "1e-05", "--optimizer", "sgd"]
    trainer, module, datamodule = _prepare(build_arg_parser().parse_args(argv), "site-1")

    assert module.dp_sgd is True and module.dp_session is not None
    assert datamodule.train_dataloader() is module.dp_session.data_loader
    trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.fit(module, datamodule=datamodule)
    meta = getattr(module, FL_META_ATTRIBUTE)
    _assert_plain_json(meta)
    assert meta["dp_sgd"]["steps_total"] == meta["local_steps"] == 2  # 8 images, expected batch 4
    assert meta["dp_sgd"]["epsilon"] > 0 and math.isfinite(meta["dp_sgd"]["epsilon"])
    assert meta["bn_buffers_included"] is False
    assert meta["dp_sgd"]["epsilon_scope"] == "site ledger"
    ledger = json.loads((workspace / "medpfl" / "dp_sgd_ledger.json").read_text())
    assert sum(n for _, _, n in ledger["history"]) == 2 and len(ledger["releases"]) == 1

    # The next job at this site (a new process: new module, new Opacus session) continues from the ledger.
    trainer, module, datamodule = _prepare(build_arg_parser().parse_args(argv), "site-1")
    assert module.dp_session.epsilon() == pytest.approx(meta["dp_sgd"]["epsilon"])
    trainer.fit(module, datamodule=datamodule)
    second = getattr(module, FL_META_ATTRIBUTE)["dp_sgd"]
    assert second["steps_total"] == 4 and second["epsilon"] > meta["dp_sgd"]["epsilon"]
    reference = RDPAccountant()
    reference.history = [(1.0, 0.5, 4)]
    assert second["epsilon"] == pytest.approx(reference.get_epsilon(delta=1e-5))


def test_dp_ledger_location(tmp_path, monkeypatch) -> None:
    """auto: the site workspace (env, else the nearest folder with startup/ above the run folder); a path (a job's
    choice) is refused; none only outside any site workspace."""
    run_dir = tmp_path / "site-1" / "job-7" / "app_site-1"
    run_dir.mkdir(parents=True)
    (tmp_path / "site-1" / "startup").mkdir()
    found = dp_ledger_path("auto", workspace_dir=None, start=run_dir)
    assert found == (tmp_path / "site-1").resolve() / "medpfl" / "dp_sgd_ledger.json"
    assert dp_ledger_path("auto", workspace_dir=str(tmp_path / "ws"), start=run_dir) == (
        (tmp_path / "ws").resolve() / "medpfl" / "dp_sgd_ledger.json"
    )
    with pytest.raises(MedPFLError, match="a job cannot choose where the site's DP-SGD ledger is"):
        dp_ledger_path("/srv/ledger.json", workspace_dir=None, start=run_dir)
    with pytest.raises(MedPFLError, match="--dp_ledger none is refused at a site"):
        dp_ledger_path("none", workspace_dir=None, start=run_dir)
    outside = tmp_path / "experiment"
    outside.mkdir()
    assert dp_ledger_path("none", workspace_dir=None, start=outside) is None
    with pytest.raises(MedPFLError, match="cannot find this site's workspace") as error:
        dp_ledger_path("auto", workspace_dir=None, start=outside)
    assert "--dp_ledger none" in error.value.fix


def test_site_entry_without_dp_flags_trains_the_plain_model(tmp_path, monkeypatch) -> None:
    """No DP flags: BatchNorm model, no Opacus session, ``dp_sgd: None`` in the facts."""
    demo = generate_demo_dataset(tmp_path / "data", num_sites=1, train_per_site=4, val_per_site=2, image_size=16)
    workspace = tmp_path / "site-1"
    write_site_data_config(
        workspace / "local" / "medpfl_data.json", demo.site_datalists["site-1"], DataConfig(image_size=16, batch_size=4)
    )
    monkeypatch.setenv("MEDPFL_SITE_WORKSPACE", str(workspace))
    trainer, module, datamodule = _prepare(build_arg_parser().parse_args([]), "site-1")
    assert module.dp_sgd is False and module.dp_session is None
    trainer.fit(module, datamodule=datamodule)
    meta = getattr(module, FL_META_ATTRIBUTE)
    assert meta["dp_sgd"] is None and meta["bn_buffers_included"] is True
