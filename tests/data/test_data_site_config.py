"""resolve_site_data: the search order, file contents and the error listing every place looked at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpfl_app.data import DataConfig, read_site_data_config, resolve_site_data, write_site_data_config
from medpfl_app.errors import MedPFLError


def _datalist(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "datalist.json"
    path.write_text('{"training": []}', encoding="utf-8")
    return path


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Env config file beats the workspace's local/ file, which beats MEDPFL_DATA_ROOT."""
    monkeypatch.chdir(tmp_path)
    root_datalist = _datalist(tmp_path / "root" / "site-1")
    workspace = tmp_path / "ws" / "site-1"
    local_datalist = _datalist(tmp_path / "local_data")
    write_site_data_config(workspace / "local" / "medpfl_data.json", "../../../local_data/datalist.json")
    env_datalist = _datalist(tmp_path / "env_data")
    env_file = write_site_data_config(tmp_path / "env.json", env_datalist, DataConfig(image_size=32))
    environ = {"MEDPFL_SITE_DATA_CONFIG": str(env_file), "MEDPFL_DATA_ROOT": str(tmp_path / "root")}

    first = resolve_site_data("site-1", workspace_dir=workspace, environ=environ)
    assert first.datalist == env_datalist and first.data.image_size == 32 and first.config_file == env_file

    del environ["MEDPFL_SITE_DATA_CONFIG"]
    second = resolve_site_data("site-1", workspace_dir=workspace, environ=environ)
    assert second.datalist == local_datalist.resolve()  # relative to the config file's folder
    assert second.data == DataConfig()

    third = resolve_site_data("site-1", workspace_dir=tmp_path / "elsewhere", environ=environ)
    assert third.datalist == root_datalist and third.config_file is None
    (tmp_path / "root" / "site-2" / "glioma").mkdir(parents=True)  # class-per-folder tree, no datalist
    tree = resolve_site_data("site-2", workspace_dir=tmp_path / "elsewhere", environ=environ)
    assert tree.datalist == tmp_path / "root" / "site-2"


def test_local_file_found_in_current_directory_or_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a workspace, local/medpfl_data.json is looked for from the current directory upwards."""
    datalist = _datalist(tmp_path / "data")
    write_site_data_config(tmp_path / "site-2" / "local" / "medpfl_data.json", datalist, DataConfig(batch_size=2))
    run_dir = tmp_path / "site-2" / "job-123" / "app_site-2"
    run_dir.mkdir(parents=True)
    monkeypatch.chdir(run_dir)
    settings = resolve_site_data("site-2", environ={})
    assert settings.datalist == datalist and settings.data.batch_size == 2


def test_nothing_found_lists_every_place(tmp_path: Path) -> None:
    """The error names the env variables, the local file and shows how to write it."""
    with pytest.raises(MedPFLError) as caught:
        resolve_site_data("site-9", workspace_dir=tmp_path, environ={"MEDPFL_DATA_ROOT": str(tmp_path)})
    message = str(caught.value)
    assert message.startswith("[site-9] no data configuration found")
    assert "MEDPFL_SITE_DATA_CONFIG" in message and str(tmp_path / "local" / "medpfl_data.json") in message
    assert str(tmp_path / "site-9" / "datalist.json") in message and '"datalist":' in caught.value.fix


def test_env_file_missing_is_not_skipped(tmp_path: Path) -> None:
    """An explicitly configured but missing file is an error, not a silent fall-through."""
    with pytest.raises(MedPFLError, match="not a file"):
        resolve_site_data("site-1", environ={"MEDPFL_SITE_DATA_CONFIG": str(tmp_path / "nope.json")})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "not valid JSON"),
        ('{"data": {}}', "no 'datalist'"),
        ('{"datalist": "d.json", "extra": 1}', "unknown key"),
        ('{"datalist": "d.json", "data": {"batchsize": 2}}', "batchsize"),
        ('{"datalist": "missing.json"}', "does not exist"),
    ],
)
def test_invalid_config_file_names_the_file(tmp_path: Path, content: str, match: str) -> None:
    """Each invalid configuration file gives one MedPFLError naming the file."""
    (tmp_path / "d.json").write_text("{}", encoding="utf-8")
    path = tmp_path / "cfg.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MedPFLError, match=match) as caught:
        read_site_data_config(path, site="site-1")
    assert str(path) in str(caught.value)


def test_write_is_atomic_and_readable(tmp_path: Path) -> None:
    """The written file is valid JSON, holds the data settings, and leaves no temp file behind."""
    datalist = _datalist(tmp_path)
    path = write_site_data_config(tmp_path / "local" / "medpfl_data.json", datalist, DataConfig(seed=4))
    content = json.loads(path.read_text(encoding="utf-8"))
    assert content["datalist"] == str(datalist) and content["data"]["seed"] == 4
    assert [entry.name for entry in path.parent.iterdir()] == ["medpfl_data.json"]
    assert read_site_data_config(path).data.seed == 4
