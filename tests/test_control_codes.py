"""ControlCodeFormat: the paper's prompt, round trips over many code sets, and rejected values."""

import random

import pytest

from hf_dpkd.synthetic.control_codes import ControlCodeFormat

FIELDS = [("category", "Business Category"), ("stars", "Review Stars")]
FMT = ControlCodeFormat(fields=FIELDS)
ALPHABET = list("abcXYZ 019.,;-_&/()'\"") + ["é", "ü", "🍕", "中", ":", "=", "|"]


def test_paper_prompt_and_training_text():
    record = {"category": "Restaurants", "stars": 5.0, "text": "ignored"}
    assert FMT.format_prompt(record) == "Business Category: Restaurants\tReview Stars: 5.0\n\n"
    assert FMT.format_training_text(record, "Great tacos.", "<|endoftext|>") == (
        "Business Category: Restaurants\tReview Stars: 5.0\n\nGreat tacos.<|endoftext|>"
    )
    assert FMT.format_training_text(record, "x", None).endswith("\n\nx")
    assert FMT.columns == ["category", "stars"]


def _random_value(rng: random.Random, fmt: ControlCodeFormat) -> str:
    while True:
        value = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
        if not any(sep in value for sep in (fmt.field_separator, "\n", "\r", fmt.key_value_separator)):
            return value


@pytest.mark.parametrize(
    "separators",
    [
        {},
        {"field_separator": " | ", "key_value_separator": " = ", "prompt_end": "\n###\n"},
        {"field_separator": ";", "key_value_separator": "=", "prompt_end": "\n\n"},
    ],
)
def test_round_trip_over_many_random_code_sets(separators):
    """Every value either round-trips exactly or is rejected (never silently mangled)."""
    rng = random.Random(0)
    ok = rejected = 0
    for n_fields in (1, 2, 4):
        fields = [(f"col{i}", f"Label {i}") for i in range(n_fields)]
        fmt = ControlCodeFormat(fields=fields, **separators)
        for _ in range(150):
            record = {c: _random_value(rng, fmt) for c, _ in fields}
            try:
                prompt = fmt.format_prompt(record)
            except ValueError as exc:
                assert "ambiguous" in str(exc)
                rejected += 1
                continue
            ok += 1
            assert prompt.endswith(fmt.prompt_end)
            assert fmt.parse_prompt(prompt) == record
            assert fmt.parse_prompt(prompt[: -len(fmt.prompt_end)]) == record
            text = "some text\twith tabs\n\nand blank lines"
            assert fmt.split_text(fmt.format_training_text(record, text, "</s>")) == (record, text + "</s>")
            assert fmt.record_of(fmt.code_of(record)) == record
    assert ok > 0.8 * (ok + rejected)
    if not separators:
        assert rejected == 0  # the paper's separators cannot combine across a label/value boundary


def test_separators_combining_across_a_boundary_are_rejected():
    fmt = ControlCodeFormat(fields=[("a", "A"), ("b", "B")], field_separator=" | ", key_value_separator=" = ")
    with pytest.raises(ValueError, match=r"values \{'a': 'x \|', 'b': 'y'\} make the prompt .* ambiguous"):
        fmt.format_prompt({"a": "x |", "b": "y"})


def test_values_with_a_colon_round_trip_under_another_key_value_separator():
    fmt = ControlCodeFormat(fields=FIELDS, key_value_separator=" = ")
    record = {"category": "Food: Asian", "stars": "4.5"}
    assert fmt.parse_prompt(fmt.format_prompt(record)) == record


@pytest.mark.parametrize(
    "value,sep",
    [("Bars\tPubs", r"'\\t'"), ("line\nbreak", r"'\\n'"), ("car\rriage", r"'\\r'"), ("Food: Asian", "': '")],
)
def test_values_holding_a_separator_are_rejected_with_the_field_and_value(value, sep):
    with pytest.raises(ValueError, match=rf"Control field category='.*' contains the separator {sep}.*clean"):
        FMT.format_prompt({"category": value, "stars": "1.0"})
    with pytest.raises(ValueError, match="contains the separator"):
        FMT.format_training_text({"category": value, "stars": "1.0"}, "text")


def test_custom_prompt_end_inside_a_value_is_rejected():
    fmt = ControlCodeFormat(fields=FIELDS, prompt_end="###")
    with pytest.raises(ValueError, match=r"stars='5###' contains the separator '###'"):
        fmt.format_prompt({"category": "Bars", "stars": "5###"})


def test_missing_or_unknown_fields():
    with pytest.raises(
        KeyError, match=r"Control field 'stars' is missing from the record \(it has \['category'\]\)"
    ):
        FMT.format_prompt({"category": "Bars"})
    with pytest.raises(ValueError, match=r"Cannot parse control-code part 'Stars: 5'.*Business Category"):
        FMT.parse_prompt("Business Category: Bars\tStars: 5\n\n")
    with pytest.raises(ValueError, match=r"lacks control field\(s\) \['stars'\]"):
        FMT.parse_prompt("Business Category: Bars\n\n")
    with pytest.raises(ValueError, match="repeats control field 'Business Category'"):
        FMT.parse_prompt("Business Category: Bars\tBusiness Category: Gyms\n\n")
    with pytest.raises(ValueError, match="has no prompt end"):
        FMT.split_text("Business Category: Bars\tReview Stars: 1.0 no blank line")
    with pytest.raises(ValueError, match=r"code=\('Bars',\) has 1 values"):
        FMT.record_of(("Bars",))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"fields": []}, "needs at least one"),
        ({"fields": [("a", "A"), ("a", "B")]}, "repeat a column"),
        ({"fields": [("a", "A"), ("b", "A")]}, "repeat a label"),
        ({"fields": [("a", "Label: x")]}, "label of 'a'='Label: x' contains the separator"),
        ({"fields": FIELDS, "field_separator": ""}, "field_separator='' must be a non-empty string"),
        ({"fields": FIELDS, "domain": {"category": ["Bars"], "stars": []}}, r"domain\['stars'\]=\[\]"),
        (
            {"fields": FIELDS, "domain": {"category": ["Bars"], "stars": ["1"], "x": ["y"]}},
            r"column\(s\) \['x'\]",
        ),
        ({"fields": FIELDS, "domain": {"category": ["A\tB"], "stars": ["1"]}}, "contains the separator"),
        ({"fields": [("a",)]}, "must be \\(column, label\\) pairs"),
    ],
)
def test_bad_formats(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ControlCodeFormat(**kwargs)


def test_dict_round_trip_and_prompt_length():
    from tests.dp_models import tiny_word_tokenizer

    fmt = ControlCodeFormat(fields=FIELDS, domain={"category": ["Bars", "Gyms"], "stars": [1.0, 5.0]})
    assert fmt.domain == {"category": ["Bars", "Gyms"], "stars": ["1.0", "5.0"]}
    assert ControlCodeFormat.from_dict(fmt.to_dict()) == fmt
    tok = tiny_word_tokenizer(["Business Category: Bars Review Stars: 1.0"])
    # word-level: "Business", "Category:", "Bars", "Review", "Stars:", "1.0"
    assert fmt.prompt_length({"category": "Bars", "stars": "1.0"}, tok) == 6
