import pytest

from ai_platform.core.errors import InvalidArgument
from ai_platform.core.names import validate_name


@pytest.mark.parametrize("name", ["mnist", "mnist_clean", "a", "A1.b-c_d", "x" * 128, "v1.2"])
def test_valid_names_pass_unchanged(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "a/b",
        "..",
        ".",
        "x" * 129,
        "x" * 200,
        "a\x00b",
        "-lead",
        "_lead",
        "/abs",
        "a\\b",
        "a..b",
        "sp ace",
        "é",
        "a\n",
    ],
)
def test_invalid_names_are_refused_with_the_rule(name):
    with pytest.raises(InvalidArgument) as info:
        validate_name(name, "dataset name")
    assert "invalid dataset name" in info.value.message
