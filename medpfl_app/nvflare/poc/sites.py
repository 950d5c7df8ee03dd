"""Site-local configuration inside a POC workspace: each site's ``local/medpfl_data.json``."""

from __future__ import annotations

from pathlib import Path

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.poc.system import SITE_DATA_CONFIG_NAME, PocLayout


def configure_site_data(layout: PocLayout, *, demo: bool, data_root: Path | None) -> dict[str, Path]:
    """Write ``<site>/local/medpfl_data.json`` for every POC site; returns site → config file.

    Each site's data is validated first (`load_site_data`), so a bad path is reported now, by site and file,
    instead of failing later inside a running job.
    """
    from medpfl_app.data import generate_demo_dataset, load_site_data, write_site_data_config

    sites = layout.sites()
    if not sites:
        raise MedPFLError(f"no POC sites under {layout.prod_dir}", fix="run `medpfl poc prepare` first")
    if demo:
        dataset = generate_demo_dataset(layout.workspace / "demo_data", num_sites=len(sites), site_names=sites)
        sources = dict(dataset.site_datalists)
    else:
        if data_root is None or not Path(data_root).is_dir():
            raise MedPFLError(f"data root {data_root} is not a folder", fix="pass --data-root with <site>/ folders")
        sources = {site: _site_source(Path(data_root).resolve(), site) for site in sites}
    written = {}
    for site, source in sources.items():
        load_site_data(source, site=site)
        config_file = layout.site_dir(site) / "local" / SITE_DATA_CONFIG_NAME
        write_site_data_config(config_file, source)
        written[site] = config_file
    return written


def _site_source(root: Path, site: str) -> Path:
    datalist = root / site / "datalist.json"
    return datalist if datalist.is_file() else root / site


def install_site_privacy(layout: PocLayout, template: str = "default", *, default_scope: str | None = None) -> dict:
    """Install the same validated privacy policy into every POC site; returns site → privacy.json path.

    The default template has client-level DP scopes only: ``private`` (the default) and ``strict``. A scope without
    DP exists only if the site admin passes a privacy.json of their own that defines one.
    """
    from medpfl_app.nvflare.privacy_policy import install_privacy_policy

    sites = layout.sites()
    if not sites:
        raise MedPFLError(f"no POC sites under {layout.prod_dir}", fix="run `medpfl poc prepare` first")
    return {
        site: install_privacy_policy(layout.site_dir(site), template, default_scope=default_scope) for site in sites
    }
