"""``medpfl data``: create the embedded demo data set and check a site's data before a run.

Both sub-commands import MONAI, NumPy and nibabel lazily so that ``medpfl --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medpfl_app.cli.options import non_negative_int, positive_float, positive_int, seed
from medpfl_app.cli.samples import register_samples

#: ``medpfl data check --help``: every check the command makes, and its exit statuses.
CHECK_DESCRIPTION = (
    "Check a datalist JSON or class-per-folder tree before training. For every listed image: read the "
    "header (format, shape, frames, dtype, DICOM photometric interpretation and transfer syntax, or PIL "
    "mode) and refuse a file declaring more than 256,000,000 pixels (or the site's own max_megapixels) "
    "before decoding it; read the stored pixels (value range, NaN/Inf, blank image); load it through the "
    "same transforms as training; and check that the model input shows the picture stored in the file "
    "(correlation at least 0.8 with the check's own rendering). Errors: unreadable files, NaN/Inf pixels, "
    "blank images or blank slices, images under 8 pixels a side, model inputs that do not match the file "
    "(frames stacked, palette or colour misread, MONOCHROME1 not inverted), identical images with "
    "conflicting labels. Warnings: images enlarged more than 4x or shrunk more than 8x to --image-size, "
    "4-D volumes, duplicates with the same label, a single-class site, classes with fewer than 2 training "
    "images. Prints one row per file (above 20 files only the rows with problems), class counts and a "
    "verdict. Exit status: 0 when the data is usable, 1 when any file or finding is an error (or any "
    "warning with --strict), 2 when the datalist/folder itself is invalid. "
    "Without SOURCE, the site's own data configuration is used (MEDPFL_SITE_DATA_CONFIG, "
    "<workspace>/local/medpfl_data.json, MEDPFL_DATA_ROOT/<site>), exactly as the training job finds it."
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``medpfl data {demo,check,samples}`` to the top-level parser."""
    parser = subparsers.add_parser(
        "data",
        help="create the demo data set or the real-MRI sample set, or check a site's data",
        description=(
            "Create the embedded brain-MRI-like demo data set or a real-MRI sample set from installed packages, "
            "or check a site's datalist / image folder before training."
        ),
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])
    _add_demo(actions)
    _add_check(actions)
    register_samples(actions)


def _add_demo(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``medpfl data demo``: write the seeded phantom data set."""
    demo = actions.add_parser(
        "demo",
        help="write the demo phantom data set, partitioned across sites",
        description=(
            "Write seeded 2-D brain-MRI-like phantoms (classes no_tumor, glioma, meningioma, pituitary) as NIfTI "
            "files, one datalist per site at OUT/<site>/datalist.json and OUT/manifest.json. Nothing is downloaded."
        ),
    )
    demo.add_argument("--out", type=Path, required=True, help="folder to write the data set into")
    demo.add_argument("--sites", type=positive_int, default=3, help="number of sites (named site-1 … site-N)")
    demo.add_argument("--train-per-site", type=positive_int, default=32, help="training images per site")
    demo.add_argument("--val-per-site", type=non_negative_int, default=16, help="validation images per site (0: none)")
    demo.add_argument("--image-size", type=positive_int, default=64, help="side length of the square images in pixels")
    demo.add_argument(
        "--partition", choices=("iid", "dirichlet"), default="iid", help="how labels are spread over sites"
    )
    demo.add_argument(
        "--alpha", type=positive_float, default=0.5, help="Dirichlet concentration (smaller = more skewed)"
    )
    demo.add_argument("--seed", type=seed, default=0, help="random seed; the same seed gives the same pixels")
    demo.set_defaults(func=_run_demo)


def _add_check(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``medpfl data check``: pre-flight a site's data before training."""
    check = actions.add_parser(
        "check",
        help="pre-flight a site's data: every file's header, pixels and model input, duplicates, class balance",
        description=CHECK_DESCRIPTION,
    )
    check.add_argument("source", type=Path, nargs="?", default=None, help="datalist JSON file or class-per-folder root")
    check.add_argument("--site", default=None, help="site name (e.g. site-1); required without SOURCE")
    check.add_argument(
        "--workspace", type=Path, default=None, help="the site's NVFlare workspace (holds local/); without SOURCE"
    )
    check.add_argument(
        "--image-size", type=positive_int, default=None, help="model input size in pixels (default: the site's)"
    )
    check.add_argument(
        "--in-channels", type=positive_int, default=None, help="model input channels (default: the site's)"
    )
    check.add_argument(
        "--all",
        action="store_true",
        dest="all_rows",
        help="list every file; by default, above 20 files only the files with errors or warnings are listed",
    )
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings too (default: only errors make the exit status 1)"
    )
    check.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write every file's facts and the findings as JSON to PATH, atomically (default: not written)",
    )
    check.set_defaults(func=_run_check)


def _run_demo(args: argparse.Namespace) -> int:
    from medpfl_app.data.demo import generate_demo_dataset

    dataset = generate_demo_dataset(
        args.out,
        num_sites=args.sites,
        train_per_site=args.train_per_site,
        val_per_site=args.val_per_site,
        image_size=args.image_size,
        partition=args.partition,
        dirichlet_alpha=args.alpha,
        seed=args.seed,
        progress=True,
    )
    print(f"demo data set written to {dataset.root} (classes: {', '.join(dataset.class_names)})")
    for site, counts in dataset.label_counts.items():
        per_class = ", ".join(f"{name}={n}" for name, n in zip(dataset.class_names, counts["training"]))
        print(f"  {site}: training {per_class}; validation {sum(counts['validation'])}")
        print(f"    datalist: {dataset.site_datalists[site]}")
    print(f"  manifest: {dataset.root / 'manifest.json'}")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from medpfl_app.data.check import check_site_data
    from medpfl_app.data.config import DataConfig
    from medpfl_app.errors import MedPFLError

    source, base = args.source, DataConfig()
    if source is None:
        if not args.site:
            raise MedPFLError(
                "medpfl data check needs a SOURCE or a --site whose data configuration to use",
                fix="run `medpfl data check path/to/datalist.json` or `medpfl data check --site site-1 "
                "[--workspace <site workspace>]`",
            )
        from medpfl_app.data.site_config import resolve_site_data

        settings = resolve_site_data(args.site, workspace_dir=args.workspace)
        source, base = settings.datalist, settings.data
        print(f"[{args.site}] data configuration: {settings.config_file or source}")
    overrides = {}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.in_channels is not None:
        overrides["in_channels"] = args.in_channels
    config = DataConfig.from_dict(base.to_dict(), **overrides)
    report = check_site_data(source, config, site=args.site, progress=True)
    print(report.format(all_rows=args.all_rows, strict=args.strict))
    if args.json is not None:
        from medpfl_app.atomic_io import write_json_atomic

        write_json_atomic(args.json, report.to_dict())
        print(f"facts written to {args.json}")
    return report.exit_code(strict=args.strict)
