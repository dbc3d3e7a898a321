"""Ingestion options from a TOML file and flags: one validated model, unknown names refused."""

from __future__ import annotations

import pytest

from curation.ingest_config import HARD_MAX_PIXELS, IngestConfig, load_ingest_config
from flows.cli import build_parser
from flows.config_flags import given


def test_file_then_flags(tmp_path):
    path = tmp_path / "ingest.toml"
    path.write_text('threads = 8\ncontact = "ops@example.org"\nallow = ["10.0.0.0/8"]\n')
    config = load_ingest_config(path, {"threads": 4, "timeout_s": 3.0})
    assert (config.threads, config.timeout_s, config.contact, config.allow) == (4, 3.0, "ops@example.org",
                                                                               ("10.0.0.0/8",))
    assert config.fetch_policy().user_agent.endswith("; +ops@example.org)")


def test_the_flags_are_the_models_fields():
    args = build_parser().parse_args(["ingest", "u.csv", "out", "--timeout", "3", "--host-rate", "0",
                                      "--allow", "10.0.0.1", "--allow", "10.0.0.2", "--no-resize-only-if-bigger"])
    from flows.cli import _INGEST_FLAGS

    fields = given(args, _INGEST_FLAGS)
    assert fields == {"timeout_s": 3.0, "host_requests_per_s": 0.0, "allow": ["10.0.0.1", "10.0.0.2"],
                      "resize_only_if_bigger": False}  # only what was typed
    assert set(_INGEST_FLAGS.values()) == set(IngestConfig.model_fields)


@pytest.mark.parametrize("body, message", [
    ("thread = 8\n", "thread: Extra inputs are not permitted"),
    ('threads = "many"\n', "threads: Input should be a valid integer"),
    ('distributor = "ray"\n', "distributor: Input should be 'multiprocessing' or 'pyspark'"),
    (f"max_pixels = {HARD_MAX_PIXELS + 1}\n", f"max_pixels: Input should be less than or equal to {HARD_MAX_PIXELS}"),
    ("host_connections = 0\n", "host_connections: Input should be greater than 0"),
])
def test_a_bad_option_is_named(tmp_path, body, message):
    path = tmp_path / "ingest.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message) as err:
        load_ingest_config(path)
    assert str(path) in str(err.value)
