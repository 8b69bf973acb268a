"""``diffedit.strict.coerce``: the one coercion of the library's ``EditParams`` and every section of a job
file (issue 20 item 13: the job and the library each had their own copy, with different messages)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pytest

from diffedit import strict
from diffedit.params import EditParams
from pipeline.config import ConfigError, EnvValue, coerce

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (True, bool, True),
        (3, int, 3),
        (3, float, 3.0),  # an integer is a number
        (2.5, float, 2.5),
        ("x", str, "x"),
        ("cuda", Literal["cpu", "cuda"], "cuda"),
        (None, int | None, None),
        (4, int | tuple[int, int], 4),
        ([1, 2], int | tuple[int, int], (1, 2)),  # lists become tuples
        (["a", "b"], tuple[str, ...], ("a", "b")),
        ({"alignment": 1}, dict[str, float], {"alignment": 1.0}),
    ],
)
def test_values_of_their_type_pass_as_that_type(value, hint, expected):
    got = strict.coerce(value, hint, "f.yaml: s.k")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("value", "hint", "message"),
    [
        (1, bool, "f.yaml: s.k: expected true or false, got integer 1"),
        (True, int, "f.yaml: s.k: expected an integer, got boolean True"),  # booleans are never numbers
        (False, float, "f.yaml: s.k: expected a number, got boolean False"),
        (2.5, int, "f.yaml: s.k: expected an integer, got number 2.5"),
        ("5", int, "f.yaml: s.k: expected an integer, got string '5'"),  # no lax parsing
        (5, str, "f.yaml: s.k: expected a string, got integer 5"),
        ("tpu", Literal["cpu", "cuda"], "f.yaml: s.k: must be one of ['cpu', 'cuda'], got 'tpu'"),
        ("four", int | None, "f.yaml: s.k: expected an integer or null, got string 'four'"),
        ([1, 2, 3], tuple[int, int], "f.yaml: s.k: expected a list of 2 items, got 3"),
        ([1, "x"], tuple[int, ...], "f.yaml: s.k[1]: expected an integer, got string 'x'"),
        ({"a": "x"}, dict[str, float], "f.yaml: s.k.a: expected a number, got string 'x'"),
        ("s3://b/", tuple[str, ...], "f.yaml: s.k: expected a list, got string 's3://b/'"),
    ],
)
def test_a_wrong_value_names_where_it_is_and_what_was_expected(value, hint, message):
    with pytest.raises(strict.StrictTypeError) as info:
        strict.coerce(value, hint, "f.yaml: s.k")
    assert str(info.value) == message
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_the_job_and_the_library_share_the_mechanism_and_its_words():
    """The same wrong value reads the same in a job section, in ``params`` and in ``EditParams``."""
    with pytest.raises(
        ConfigError, match=r"^job.yaml: compute.batch_size: expected an integer, got boolean True$"
    ):
        coerce(True, int, "job.yaml: compute.batch_size")
    with pytest.raises(
        TypeError, match=r"^job.yaml: params: num_inference_steps: expected an integer, got boolean"
    ):
        EditParams.from_dict({"num_inference_steps": True}, source="job.yaml: params")
    # a whole ${VAR} is read as YAML where a number or a boolean is expected, nowhere else
    assert coerce(EnvValue("0.25"), float, "k") == 0.25 and coerce(EnvValue("true"), bool, "k") is True
    assert coerce(EnvValue("007"), str, "k") == "007"
    with pytest.raises(ConfigError, match="expected a number, got string 'lots'"):
        coerce(EnvValue("lots"), float, "k")


def test_no_second_copy_of_the_type_checks():
    """Only ``diffedit/strict.py`` checks a config value's type by hand (the job's ``pipeline/config.py``
    and the library's ``diffedit/params.py`` call it)."""
    check = re.compile(r"isinstance\(value, bool\)|expected an integer")
    holders = sorted(
        str(p.relative_to(REPO)) for d in ("diffedit", "pipeline") for p in (REPO / d).rglob("*.py")
        if check.search(p.read_text())
    )  # fmt: skip
    assert holders == ["diffedit/strict.py"]


def test_edit_params_are_frozen_and_replace_checks_like_construction():
    """README: ``EditParams`` is typed, strict and frozen; ``replace`` returns a checked copy."""
    import dataclasses

    params = EditParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.encode_ratio = 0.5  # type: ignore[misc]
    changed = params.replace(encode_ratio=0.5)
    assert (changed.encode_ratio, params.encode_ratio) == (0.5, 0.8)
    assert hash(changed) != hash(params) and changed == EditParams(encode_ratio=0.5)
    with pytest.raises(TypeError, match="encode_ratio"):
        params.replace(encode_ratio=True)  # booleans never stand in for numbers
    with pytest.raises(ValueError, match=r"encode_ratio must be in \(0, 1\]"):
        params.replace(encode_ratio=1.5)
