"""``medpfl preflight <job>`` on committed job folders and tiny generated site data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpfl_app.cli.main import main
from medpfl_app.nvflare.preflight.job_settings import read_job_settings

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def test_job_level_defenses_and_site_overrides_are_read_from_the_job_folder() -> None:
    client_dp = read_job_settings(JOBS / "fedavg_client_dp")
    audit = read_job_settings(JOBS / "fedavg_audit")

    assert [d.key for d in client_dp.job_defenses] == ["drop_bn_stats", "client_dp"]
    assert client_dp.job_defenses[1].params["noise_multiplier"] == 1.0
    assert audit.job_defenses == ()  # the sent-update digest is not a defense
    assert audit.site_settings("site-1").batch_size == 1 and audit.site_settings("site-2").batch_size == 0
    assert audit.min_clients == 3 and audit.training.network == "lenet_sigmoid"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medpfl_app.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("preflight_data")
    generate_demo_dataset(root, num_sites=2, train_per_site=8, val_per_site=4, image_size=16, seed=0)
    return root


def test_preflight_prints_json_and_writes_it(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "preflight.json"

    code = main(
        [
            "preflight",
            str(JOBS / "fedavg_audit"),
            "--site-data",
            f"site-2={demo_data / 'site-2'}",
            "--time-limit",
            "2",
            "--no-what-if",
            "--json",
            "--out",
            str(out),
        ]
    )

    printed = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    assert printed == json.loads(out.read_text())
    (site,) = printed["sites"]
    assert site["site"] == "site-2" and site["facts"]["num_train_images"] == 8
    assert site["facts"]["batch_size"] == 8  # the site's own batch size: the job leaves it to the site
    assert site["probe"]["verdict"]["level"] == site["level"]
    assert code == (1 if site["level"] == "high" else 0)


def test_preflight_text_names_each_site_and_its_factors(demo_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "preflight",
            str(JOBS / "fedavg_audit"),
            "--site-data",
            f"site-1={demo_data / 'site-1'}",
            "--time-limit",
            "1",
            "--no-what-if",
        ]
    )

    text = capsys.readouterr().out
    assert code in (0, 1)
    assert "site-1:" in text and "batch size 1" in text and "no defense" in text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--site-data", "site-1"], "SITE=PATH"),
        (["--time-limit", "0"], "time-limit"),
        (["--sites", "site-9"], "no site's data"),
    ],
)
def test_bad_input_is_one_clear_error(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDPFL_DATA_ROOT", raising=False)

    try:
        code = main(["preflight", str(JOBS / "fedavg_audit"), *argv])
    except SystemExit as exit:  # argparse refuses a bad option value itself
        code = exit.code
    assert code == 2
    assert words in capsys.readouterr().err


def test_a_folder_that_is_not_a_job_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preflight", str(tmp_path)]) == 2
    assert "not a job folder" in capsys.readouterr().err
