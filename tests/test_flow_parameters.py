"""build-corpus's parameters as forms: the ingest options and the whole curation rules are
pydantic models, so Prefect's UI shows every field and refuses an unknown one before a run."""

from __future__ import annotations

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from curation.config import CurationConfig, load_config
from curation.ingest_config import IngestConfig
from flows.build_corpus import build_corpus, curation_rules


def test_the_forms_show_every_field_of_the_models():
    schema = parameter_schema(build_corpus.fn)
    definitions = schema.definitions
    assert schema.properties["curation"]["anyOf"][0]["$ref"].endswith("/CurationConfig")
    assert schema.properties["ingest_options"]["anyOf"][0]["$ref"].endswith("/IngestConfig")
    assert set(definitions["CurationConfig"]["properties"]) == set(CurationConfig.model_fields)
    assert set(definitions["IngestConfig"]["properties"]) == set(IngestConfig.model_fields)
    for section in ("decode", "image", "text", "language", "eval_dedup", "corpus_dedup", "output"):
        model = CurationConfig.model_fields[section].annotation
        assert set(definitions[model.__name__]["properties"]) == set(model.model_fields)


def test_a_form_is_validated_into_the_model_and_an_unknown_rule_is_refused():
    rules = load_config("lit-relaxed", ["image.min_side=48"]).to_dict()
    given = build_corpus.validate_parameters({"curation": rules})["curation"]
    assert isinstance(given, CurationConfig) and given.image.min_side == 48 and given.preset == "lit-relaxed"
    with pytest.raises(ParameterTypeError, match="curation.image.min_sied"):
        build_corpus.validate_parameters({"curation": {**rules, "image": {**rules["image"], "min_sied": 3}}})


def test_the_run_curates_with_the_form_then_the_overrides():
    form = load_config("lit-relaxed", ["image.min_side=48"])
    rules = curation_rules(form, None, None, ["text.max_words=9"])
    assert (rules.preset, rules.image.min_side, rules.text.max_words) == ("lit-relaxed", 48, 9)
    assert form.text.max_words != 9  # the overrides went into a copy
    assert curation_rules(None, "align", None, []).to_dict() == load_config("align").to_dict()
    with pytest.raises(ValueError, match="not both"):
        curation_rules(form, "align", None, [])
