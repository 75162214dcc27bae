"""Configuration: defaults, files, overrides and every validation error."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from tlsquant import config_docs
from tlsquant.config import RENAMED, Cells, Config, ThresholdRule, Thresholds, load_config
from tlsquant.config_docs import default_toml, generated_files
from tlsquant.errors import ConfigError

from .conftest import REPO


def test_default_toml_spells_out_the_built_in_defaults():
    assert load_config(REPO / "configs" / "default.toml") == Config()
    assert load_config() == Config()


@pytest.mark.parametrize("relative", sorted(map(str, generated_files())))
def test_generated_files_are_current(relative):
    """configs/default.toml and docs/configuration.md are generated from the dataclasses: edit those, then
    run ``python -m tlsquant.config_docs``."""
    assert (REPO / relative).read_text(encoding="utf-8") == generated_files()[Path(relative)], (
        f"{relative} differs from the config dataclasses: run python -m tlsquant.config_docs")


def test_the_generated_toml_holds_every_setting_with_its_doc():
    text = default_toml()
    assert load_config_text(text) == Config()
    flat = _flatten(tomllib.loads(text))
    assert set(flat) == set(_flatten(Config().to_dict()))
    for item in dataclasses.fields(Config):
        for setting in dataclasses.fields(getattr(Config(), item.name)):
            assert setting.metadata["doc"].strip(), f"{item.name}.{setting.name} has no doc"
    assert "\nmin_area_um2 = 6000.0               # published minimum TLS sizes" not in text  # aligned, not padded out
    assert 'min_area_um2 = 6000.0         # published minimum TLS sizes are 5,000-6,500 µm²' in text


def test_a_setting_without_a_doc_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        width_um: float = 3.0

    with pytest.raises(TypeError, match="config setting 'width_um' has no doc"):
        config_docs.doc(dataclasses.fields(Undocumented)[0])


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    assert config_docs.main(["--root", str(tmp_path), "--check"]) == 1
    assert "differs: configs/default.toml" in capsys.readouterr().out
    assert config_docs.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "configs" / "default.toml").read_text(encoding="utf-8") == default_toml()
    assert config_docs.main(["--root", str(tmp_path), "--check"]) == 0


FILE_SUFFIXES = {"csv", "gz", "png", "json", "geojson", "parquet", "h5ad", "zarr", "html", "toml", "md"}


def test_every_setting_the_docs_name_exists():
    """`section.key` names in the README and docs are settings (catches renamed or removed keys); docs/outputs.md
    is left out: its `cells.total` and the like are summary.json fields."""
    known = set(_flatten(Config().to_dict())) | {f"thresholds.{role}.{key}" for role in ("default", "b_cells")
                                                  for key in ("method", "k", "fraction", "percentile", "value")}
    sections = {f.name for f in dataclasses.fields(Config)}
    texts = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "outputs.md")]
    named = set()
    for path in texts:
        for name in re.findall(r"`(?:--set )?([a-z_]+\.[a-z0-9_.]+[a-z0-9_])(?:[ =][^`]*)?`", path.read_text(encoding="utf-8")):
            if name.split(".")[0] in sections and name.rsplit(".", 1)[1] not in FILE_SUFFIXES:
                named.add((path.name, name))
    unknown = sorted((file, name) for file, name in named
                     if name not in known and not name.startswith(("thresholds.markers.", "channels.fluorophores."))
                     and not any(k.startswith(name + ".") for k in known) and not _role_rule(name))
    assert not unknown, unknown
    assert len(named) > 30


def _role_rule(name: str) -> bool:
    parts = name.split(".")
    return (len(parts) == 3 and parts[0] == "thresholds" and parts[1] in {f.name for f in dataclasses.fields(Thresholds)}
            and parts[2] in {f.name for f in dataclasses.fields(ThresholdRule)}) or name == "thresholds.*.method"


def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config_text(text: str) -> Config:
    from tlsquant.config import _build

    return _build(Config, tomllib.loads(text), "generated")


def test_every_shipped_config_loads():
    for path in (REPO / "configs").glob("*.toml"):
        assert isinstance(load_config(path), Config)
    example = load_config(REPO / "configs" / "cytokeratin-carcinoma.toml")
    assert example.channels.tumour == "panCK" and example.maturation.scheme == "silina"
    assert example.channels.b_cells == "CD20"  # untouched keys keep their defaults


def test_overrides_take_toml_values():
    config = load_config(None, ["tls.min_area_um2=8000", "maturation.scheme=silina",
                                "location.counted=['intratumoral']", "thresholds.b_cells.method=otsu",
                                "tls.require_t_cell_zone=true"])
    assert config.tls.min_area_um2 == 8000.0
    assert config.maturation.scheme == "silina"
    assert config.location.counted == ("intratumoral",)
    assert config.thresholds.b_cells.method == "otsu" and config.thresholds.b_cells.k == 3.0
    assert config.tls.require_t_cell_zone is True
    assert config.to_dict()["location"]["counted"] == ["intratumoral"]


@pytest.mark.parametrize("override, message", [
    ("tls.min_are_um2=1", "unknown setting 'min_are_um2'; expected one of"),
    ("colour.x=1", "unknown setting 'colour'"),
    ("tls.min_area_um2=big", "tls.min_area_um2: expected a number, got 'big'"),
    ("tls.min_area_um2=-5", "tls.min_area_um2 must be > 0, got -5.0"),
    ("tumour.closing_um=-1", "tumour.closing_um must be >= 0"),
    ("tls.edge_fraction=1.5", "tls.edge_fraction is a fraction between 0 and 1"),
    ("thresholds.fdc.method=magic", "thresholds.fdc.method must be one of background, otsu, triangle, li"),
    ("maturation.scheme=other", "maturation.scheme must be 'binary' or 'silina'"),
    ("location.counted=['nearby']", "location.counted may hold intratumoral, peritumoral, distal"),
    ("tls.require_t_cell_zone=1", "expected true or false"),
    ("channels.b_cells=''", "channels.b_cells needs a marker name"),
    ("tissue.edge_fraction=2", "tissue.edge_fraction is a fraction between 0 and 1"),
    ("tls.grow_um=-1", "tls.grow_um must be >= 0"),
    ("tls.contrast_band_um=[40, 10]", "tls.contrast_band_um is [inner, outer] in µm with 0 <= inner < outer, got [40.0, 10.0]"),
    ("cells.whole_cell_markers=['Foxp3']", "marker 'Foxp3' is in both cells.nuclear_markers and cells.whole_cell_markers"),
    ("tls", "expected section.key=value"),
    ("min_area=3", "the key needs a section"),
])
def test_invalid_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[tls\nmin_area_um2 = 3")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    typed = tmp_path / "typed.toml"
    typed.write_text("[tls]\nsigma_um = 'wide'\n")
    with pytest.raises(ConfigError, match=r"typed.toml.tls.sigma_um: expected a number"):
        load_config(typed)
    with pytest.raises(ValueError):  # also the built-in
        load_config(typed)


def test_a_fixed_threshold_needs_its_value():
    with pytest.raises(ConfigError, match=r"thresholds.b_cells.method = 'fixed' needs thresholds.b_cells.value, a threshold > 0"):
        load_config(None, ['thresholds.b_cells={method="fixed"}'])
    assert load_config(None, ['thresholds.b_cells={method="fixed", value=12.5}']).thresholds.b_cells.value == 12.5


@pytest.mark.parametrize("channel, compartment", [
    ("CD20", "ring"), ("cd-20", "ring"), ("CD20 (Opal 520)", "ring"), ("panCK", "ring"), ("FoxP3", "nucleus"),
    ("MUM-1", "nucleus"), ("Ki67", "nucleus"),
])
def test_each_listed_marker_has_its_compartment(channel, compartment):
    assert Cells().compartment(channel) == compartment


def test_an_unlisted_marker_is_refused_naming_it_and_the_settings():
    with pytest.raises(ConfigError, match=r"channel 'LAG-3 \(Opal 650\)' is scored per cell but is in none of "
                                          r"cells.nuclear_markers, cells.ring_markers \(membrane, cytoplasm\) and "
                                          r"cells.whole_cell_markers.*or name the channels to score in cells.markers"):
        Cells(ring_markers=("CD20",)).compartment("LAG-3 (Opal 650)")
    moved = load_config(None, ["cells.whole_cell_markers=['LAG3', 'CD-20']"]).cells
    assert moved.compartment("LAG-3 (Opal 650)") == "cell"
    assert moved.compartment("CD20") == "cell"  # named by the panel: wins over the default ring list


def test_the_cytokeratin_example_scores_its_tumour_marker_in_the_cytoplasm():
    cells = load_config(REPO / "configs" / "cytokeratin-carcinoma.toml").cells
    assert cells.compartment("panCK") == "ring" and cells.compartment("CD20") == "ring"
    assert cells.compartment("TFE3") == "nucleus"


@pytest.mark.parametrize(("old", "new"), [(f"{section}.{old}", f"{section}.{new}")
                                          for (section, old), new in RENAMED.items()])
def test_a_renamed_setting_is_still_read_and_warned_about(old, new, tmp_path):
    section, name = new.split(".")
    default = getattr(getattr(load_config(), section), name)
    value = 0.4 if default != 0.4 else 0.45
    with pytest.warns(FutureWarning, match=f"{old} is now called {new}"):
        from_override = load_config(None, [f"{old}={value}"])
    assert getattr(getattr(from_override, section), name) == value
    path = tmp_path / "old.toml"
    path.write_text(f"[{section}]\n{old.split('.')[1]} = {value}\n")
    with pytest.warns(FutureWarning, match=str(path)):
        assert getattr(getattr(load_config(path), section), name) == value
    with pytest.raises(ConfigError, match=f"give only {new}"):
        load_config(None, [f"{old}={value}", f"{new}={value}"])
