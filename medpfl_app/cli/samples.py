"""``medpfl data samples``: write the small real-MRI sample set (`medpfl_app.data.samples`) for N sites.

Kept free of heavy imports: ``medpfl --help`` loads this module.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medpfl_app.cli.options import positive_int, seed


def register_samples(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``samples`` to the ``medpfl data`` sub-commands ``actions``."""
    samples = actions.add_parser(
        "samples",
        help="write a small multi-site set of real MRI images (from installed packages) to try your-own-data runs",
        description=(
            "Cut 2-D images from real MRI that ships inside installed packages (dipy's T1 coronal slice and b=0 "
            "diffusion volume, nibabel's functional EPI volume; pip install 'medpfl_app[realdata]'), deal them "
            "to N sites and write OUT/<site>/images/* (NIfTI and PNG, alternating by site), OUT/<site>/datalist.json "
            "and OUT/manifest.json. The labels (t1_coronal, dwi_b0_axial, epi_axial: the image each one was cut "
            "from) are for exercising the pipeline only, not a diagnosis. Nothing is downloaded. Try it with "
            "`medpfl demo --data OUT`."
        ),
    )
    samples.add_argument("--out", type=Path, required=True, help="folder to write the data set into")
    samples.add_argument("--sites", type=positive_int, default=3, help="number of sites (named site-1 … site-N)")
    samples.add_argument("--per-class", type=positive_int, default=24, help="images per class over all sites")
    samples.add_argument("--image-size", type=positive_int, default=64, help="side of the square images in pixels")
    samples.add_argument("--seed", type=seed, default=0, help="seed of the split across sites (pixels never change)")
    samples.set_defaults(func=_run_samples)


def _run_samples(args: argparse.Namespace) -> int:
    from medpfl_app.data.samples import write_real_samples

    dataset = write_real_samples(
        args.out, num_sites=args.sites, per_class=args.per_class, image_size=args.image_size, seed=args.seed
    )
    print(f"real MRI sample set written to {dataset.root} (classes: {', '.join(dataset.class_names)};")
    print("  labels name the source image, for exercising the pipeline only)")
    for site, counts in dataset.label_counts.items():
        per_class = ", ".join(f"{name}={n}" for name, n in zip(dataset.class_names, counts["training"]))
        print(f"  {site}: training {per_class}; validation {sum(counts['validation'])}")
        print(f"    datalist: {dataset.site_datalists[site]}")
    print(f"  manifest: {dataset.root / 'manifest.json'}")
    print(f"next: medpfl demo --data {dataset.root}")
    return 0
