"""The submission parser over random fields: a Submission or a typed 422, never anything else."""

from __future__ import annotations

from hypothesis import given, settings as hsettings, strategies as st

from lift3d.errors import InvalidOption
from lift3d.settings import load_settings
from server.submission import SUBMIT_OPTIONS, parse_submission

SETTINGS = load_settings({})
NAMES = st.one_of(st.sampled_from(sorted(SUBMIT_OPTIONS)), st.text(max_size=12))
VALUES = st.one_of(
    st.text(max_size=30),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "auto", "on", "off", "uv", "vertex", "0", "+5", "٥", " 5"]),
)


@hsettings(max_examples=400, deadline=None)
@given(fields=st.dictionaries(NAMES, VALUES, max_size=6))
def test_random_fields_parse_or_are_refused_with_a_code(fields: dict[str, str]) -> None:
    try:
        submission = parse_submission(fields, SETTINGS)
    except InvalidOption as error:
        assert error.code == "unknown_option" or error.code.startswith("invalid_") or error.code == "webhook_not_allowed"
        if error.code == "unknown_option":
            assert set(fields) - set(SUBMIT_OPTIONS)
        return
    assert not set(fields) - set(SUBMIT_OPTIONS)
    for name in ("steps", "seed", "texture_size"):
        if name in fields:
            assert fields[name].lstrip("-").isascii() and fields[name].lstrip("-").isdigit()
            assert getattr(submission.options, name) == int(fields[name])
