import pytest

from corpus.config import Section, load_config


class Inner(Section):
    min_side: int = 150
    langs: list[str] = []


class Outer(Section):
    images: Inner = Inner()
    name: str = "x"


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("images:\n  min_side: 200\n")
    cfg = load_config(Outer, f, ["images.langs=[en, de]", "name=run1"])
    assert cfg.images.min_side == 200 and cfg.images.langs == ["en", "de"] and cfg.name == "run1"


def test_unknown_key_names_file_and_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("images:\n  min_sid: 200\n")
    with pytest.raises(ValueError) as e:
        load_config(Outer, f)
    assert "bad.yaml" in str(e.value) and "images.min_sid" in str(e.value) and "unknown key" in str(e.value)


def test_bad_value_and_bad_override():
    with pytest.raises(ValueError, match="images.min_side"):
        load_config(Outer, None, ["images.min_side=big"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(Outer, None, ["images.min_side"])


def test_missing_file():
    with pytest.raises(ValueError, match="not found"):
        load_config(Outer, "/nonexistent/run.yaml")


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys without a word: a run file whose edit added `min_side` again
    instead of replacing it ran with whichever came last. Now both lines are named; a merge (`<<:`) may still
    be overridden, and the same key in two sections is no repeat."""
    f = tmp_path / "run.yaml"
    f.write_text("images:\n  min_side: 200\n  langs: [en]\n  min_side: 300\n")
    with pytest.raises(ValueError) as e:
        load_config(Outer, f)
    assert str(e.value).count("\n") == 0
    assert "run.yaml" in str(e.value) and "line 4, column 3: key 'min_side' given twice (first at line 2)" in str(
        e.value
    )
    with pytest.raises(ValueError, match=r"--set 'images=.*key 'min_side' given twice"):
        load_config(Outer, None, ["images={min_side: 1, min_side: 2}"])
    f.write_text("images:\n  <<: {min_side: 200, langs: [en]}\n  min_side: 300\nname: a\n")
    cfg = load_config(Outer, f)
    assert (cfg.images.min_side, cfg.images.langs, cfg.name) == (300, ["en"], "a")
