"""iDLG and CPL on real MRI reach the bar they reach on the demo phantoms: mean SSIM >= 0.9 and ASR >= 90 %.

Same setting as the phantom bar (``benchmarks/RESULTS.md``, seed setting): untrained sigmoid LeNet with fresh
U(-0.5, 0.5) weights per image, batch 1, one gradient, labels recovered by the attack (not given), the registered
recipes with L-BFGS 30 steps x 20 updates, scored per image after Hungarian matching with SSIM (data range 1).
The images are 64x64 windows of real scanner slices (`medpfl_app.data.samples`: T1 coronal, b=0 DWI, EPI; three of
each), written to disk and read back through the site loaders at the audited job's 32 px, exactly as training
would see them. One torch thread keeps the optimisation path, hence the result, identical on every machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medpfl_app.attacks import UpdateKind, build_attack, knowledge_from_update
from medpfl_app.attacks.simulated_site import init_uniform_, simulate_site_update
from medpfl_app.metrics import evaluate_reconstruction
from medpfl_app.models import build_network

pytestmark = pytest.mark.slow

SIZE = 32  # the audited demo job's input size, as for the phantom bar
PER_CLASS = 3
BUDGET = {"iterations": 30, "lbfgs_max_iter": 20}


@pytest.fixture(scope="module")
def real_mri(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor]:
    """Nine real MRI windows ``(9, 1, 32, 32)`` in [0, 1] and their labels, loaded as a site loads them."""
    pytest.importorskip("dipy", reason="real MRI samples need dipy: pip install 'medpfl_app[realdata]'")
    from medpfl_app.data import DataConfig, build_transforms, load_site_data
    from medpfl_app.data.samples import write_real_samples

    root = Path(tmp_path_factory.mktemp("real_mri"))
    samples = write_real_samples(root, num_sites=1, per_class=PER_CLASS, validation_fraction=0.0)
    items = load_site_data(samples.site_datalists["site-1"]).training
    transform = build_transforms(DataConfig(image_size=SIZE), train=False)
    loaded = [transform(dict(item)) for item in items]
    images = torch.stack([torch.as_tensor(x["image"]).float() for x in loaded]).clamp(0, 1)
    labels = torch.tensor([int(x["label"]) for x in loaded])
    return images, labels


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("attack", ["idlg", "cpl"])
def test_attack_inverts_real_mri_at_batch_one(attack: str, real_mri, one_thread) -> None:
    """Every image's gradient on a fresh sigmoid LeNet is inverted: mean SSIM >= 0.9, ASR >= 90 %, labels right."""
    images, labels = real_mri
    assert images.shape == (3 * PER_CLASS, 1, SIZE, SIZE) and labels.unique().numel() == 3
    ssims, label_hits = [], []
    for index in range(images.shape[0]):
        image, label = images[index : index + 1], labels[index : index + 1]
        torch.manual_seed(index)
        model = init_uniform_(build_network("lenet_sigmoid", in_channels=1, num_classes=3, image_size=SIZE), seed=index)
        site = simulate_site_update(model, image, label, kind=UpdateKind.GRADIENT)
        knowledge = knowledge_from_update(
            model, site.global_weights, site.update, site.meta, image_shape=(1, SIZE, SIZE), kind=UpdateKind.GRADIENT
        )
        result = build_attack(attack, seed=index, **BUDGET).run(knowledge)
        report = evaluate_reconstruction(
            result.reconstructions, image, recovered_labels=result.labels, true_labels=label
        )
        ssims.append(report.ssim[0])
        label_hits.append(report.label_accuracy)

    mean_ssim = sum(ssims) / len(ssims)
    success_rate = sum(value >= 0.9 for value in ssims) / len(ssims)
    assert mean_ssim >= 0.9 and success_rate >= 0.9, [round(value, 3) for value in ssims]
    assert all(hit == 1.0 for hit in label_hits)


def test_untouched_guess_is_far_from_the_real_images(real_mri) -> None:
    """The bar means something: a U(0, 1) guess scores SSIM < 0.1 on the same images (as on the phantoms)."""
    images, _ = real_mri
    guess = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))

    report = evaluate_reconstruction(guess, images)

    assert max(report.ssim) < 0.1 and report.asr == 0.0
