"""The option definitions: one strict ASCII grammar, the ranges, and the schema that documents them."""

from __future__ import annotations

import re

import jsonschema
import pytest
from hypothesis import given, settings, strategies as st

from lift3d.errors import InvalidOption
from lift3d.settings import EngineSettings
from pipeline.options import ENGINE_OPTIONS, OPTIONS_BY_NAME, JobOptions, Option, resolve_options

NUMERIC = [o for o in ENGINE_OPTIONS if o.kind in ("integer", "number")]
ASCII_INTEGER = re.compile(r"-?[0-9]+")


def outcome(option: Option, raw: str):
    try:
        return ("ok", option.parse_value(raw))
    except InvalidOption as error:
        assert error.code == option.code, (option.name, raw, error.code)
        return ("refused", None)


@pytest.mark.parametrize("raw", ["+5", " 5", "5 ", "٥", "۵", "５", "5_0", "0x10", "1e1", "", "５0", "\t5", "5\n"])
def test_integers_are_ascii_digits_only(raw: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        OPTIONS_BY_NAME["steps"].parse_value(raw)
    assert caught.value.code == "invalid_steps"


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "Infinity", "٤.٠", "+4", " 4.0", "4,0", "4.0f"])
def test_numbers_are_ascii_decimals_only(raw: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        OPTIONS_BY_NAME["guidance"].parse_value(raw)
    assert caught.value.code == "invalid_guidance"


@pytest.mark.parametrize("raw", ["True", "1", "yes", "on", " true", ""])
def test_flags_are_true_or_false(raw: str) -> None:
    with pytest.raises(InvalidOption):
        OPTIONS_BY_NAME["return_views"].parse_value(raw)
    assert OPTIONS_BY_NAME["return_views"].parse_value("true") is True
    assert OPTIONS_BY_NAME["return_views"].parse_value("false") is False


@settings(max_examples=300, deadline=None)
@given(option=st.sampled_from(ENGINE_OPTIONS), raw=st.text(max_size=40))
def test_any_string_is_a_value_or_a_typed_refusal(option: Option, raw: str) -> None:
    kind, value = outcome(option, raw)
    if kind == "ok" and option.kind == "integer":
        assert ASCII_INTEGER.fullmatch(raw) and value == int(raw)
    if kind == "ok":
        # What the parser accepts, the published schema accepts too.
        jsonschema.validate(value, option.json_schema())


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_in_range_value_round_trips_and_out_of_range_is_refused(data) -> None:  # noqa: ANN001
    option = data.draw(st.sampled_from(NUMERIC))
    if option.kind == "integer":
        value = data.draw(st.integers(int(option.minimum), int(option.maximum)))
        assert option.parse_value(str(value)) == value
        outside = data.draw(st.one_of(st.integers(max_value=int(option.minimum) - 1), st.integers(min_value=int(option.maximum) + 1)))
        if outside not in option.also:
            assert outcome(option, str(outside))[0] == "refused"
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(outside, option.json_schema())
    else:
        value = data.draw(st.floats(option.minimum, option.maximum))
        assert option.parse_value(repr(value)) == value


def test_zero_faces_is_allowed_besides_the_range() -> None:
    faces = OPTIONS_BY_NAME["target_faces"]
    assert faces.parse_value("0") == 0
    jsonschema.validate(0, faces.json_schema())
    with pytest.raises(InvalidOption):
        faces.parse_value("499")


def test_resolving_fills_the_settings_defaults_and_checks_typed_callers() -> None:
    engine = EngineSettings()
    resolved = resolve_options(JobOptions(seed=5), engine)
    assert (resolved.steps, resolved.texture_size, resolved.return_views) == (engine.multiview.steps, engine.finish.texture_size, False)
    with pytest.raises(InvalidOption) as caught:
        resolve_options(JobOptions(steps=1000), engine)
    assert caught.value.code == "invalid_steps"


def test_every_option_is_a_field_of_job_options() -> None:
    # The table is the one place an option is defined: the structs follow it.
    assert [o.name for o in ENGINE_OPTIONS] == list(JobOptions.__struct_fields__)
