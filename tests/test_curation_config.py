"""The curation config from a TOML file and --set: validated, unknown names refused, file < --set."""

from __future__ import annotations

import pytest

from curation.config import load_config
from flows.serve import DEMO_CURATION


def test_a_file_sets_rules_and_its_preset_and_set_wins(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('preset = "lit-relaxed"\n[image]\nmin_side = 100\n[language]\nallow = ["en", "de"]\n')
    config = load_config(None, ["image.min_side=120"], path)
    assert config.preset == "lit-relaxed" and config.text.min_words == 1  # the preset's rules
    assert config.image.min_side == 120 and config.language.allow == ["en", "de"]
    assert load_config("align", [], path).preset == "align"  # a preset named on the command line wins


def test_the_demo_rules_are_the_shipped_file():
    config = load_config(None, [], DEMO_CURATION)
    assert (config.preset, config.image.min_side) == ("lit-relaxed", 48)


@pytest.mark.parametrize("body, message", [
    ("[imag]\nmin_side = 1\n", "unknown section 'imag'"),
    ("[image]\nmin_sid = 1\n", "image has no field 'min_sid' \\(you probably got a typo\\)"),
    ('[image]\nmin_side = "big"\n', "image.min_side: Input should be a valid integer"),
    ('[text]\ntoo_long = "cut"\n', "text.too_long: Input should be 'truncate' or 'reject'"),
    ("image = 3\n", "'image' is not a \\[section\\] table"),
    ('preset = "strict"\n', "unknown preset 'strict'"),
])
def test_a_bad_file_is_refused_by_name(tmp_path, body, message):
    path = tmp_path / "rules.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message) as err:
        load_config(None, [], path)
    if "preset" not in body:
        assert str(path) in str(err.value)
