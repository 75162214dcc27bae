"""Configuration: defaults, files, overrides and every validation error."""

from __future__ import annotations

import pytest

from tlsquant.config import Config, load_config
from tlsquant.errors import ConfigError

from .conftest import REPO


def test_default_toml_spells_out_the_built_in_defaults():
    assert load_config(REPO / "configs" / "default.toml") == Config()
    assert load_config() == Config()


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
    ("tls.level_fraction=1.5", "tls.level_fraction is a fraction between 0 and 1"),
    ("thresholds.fdc.method=magic", "thresholds.fdc.method must be one of background, otsu, triangle, li"),
    ("maturation.scheme=other", "maturation.scheme must be 'binary' or 'silina'"),
    ("location.counted=['nearby']", "location.counted may hold intratumoral, peritumoral, distal"),
    ("tls.require_t_cell_zone=1", "expected true or false"),
    ("channels.b_cells=''", "channels.b_cells needs a marker name"),
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
