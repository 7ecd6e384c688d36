"""The V2 selection rule and the texts the student scores, without a model."""

import pytest

from reflection_assets.method.selection import (
    TEMPLATES,
    Perplexities,
    VariantScore,
    decide,
    fill,
    instruction_span,
    reverse_instruction,
    top_share,
)


def s(ifd, r_ifd):
    return VariantScore(ifd, r_ifd)


# -------------------------------------------------------------- the rule, every branch


def test_instruction_raised_ifd_and_both_passes_keeps_both():
    d = decide({"original": s(0.5, 0.6), "instruction": s(0.7, 0.8), "both": s(0.9, 0.5), "response": s(0.1, 0.1)})
    assert d.kept == "both"
    assert "instruction raised IFD" in d.reason


def test_instruction_raised_ifd_but_both_not_easier_to_reverse_keeps_nothing():
    # 'response' would pass, but the official rule never falls back to it in this branch.
    d = decide({"original": s(0.5, 0.6), "instruction": s(0.7, 0.5), "both": s(0.9, 0.5), "response": s(0.1, 0.1)})
    assert d.kept is None
    assert "not below" in d.reason


@pytest.mark.parametrize("both", [s(1.0, 0.5), s(1.2, 0.5), s(0.9, 1.0)])
def test_instruction_raised_ifd_but_both_not_below_one_keeps_nothing(both):
    d = decide({"original": s(0.5, 0.6), "instruction": s(0.7, 1.5), "both": both, "response": s(0.1, 0.1)})
    assert d.kept is None
    assert "not both below 1" in d.reason


def test_instruction_did_not_raise_ifd_and_response_passes_keeps_response():
    d = decide({"original": s(0.5, 0.6), "instruction": s(0.4, 0.2), "both": s(0.1, 0.1), "response": s(0.8, 0.5)})
    assert d.kept == "response"
    assert "did not raise IFD" in d.reason


def test_equal_ifd_is_not_raised():
    d = decide({"original": s(0.5, 0.6), "instruction": s(0.5, 0.6), "both": s(0.1, 0.1), "response": s(0.8, 0.5)})
    assert d.kept == "response"


def test_response_not_easier_to_reverse_keeps_nothing():
    d = decide({"original": s(0.5, 0.6), "instruction": s(0.4, 0.2), "both": s(0.1, 0.1), "response": s(0.8, 0.6)})
    assert d.kept is None


@pytest.mark.parametrize("response", [s(1.0, 0.5), s(0.9, 0.9999999), s(3.0, 0.1)])
def test_response_not_below_one_keeps_nothing(response):
    d = decide({"original": s(0.5, 2.0), "instruction": s(0.4, 0.2), "both": s(0.1, 0.1), "response": response})
    assert (d.kept is None) == (response.ifd >= 1 or response.r_ifd >= 1)


def test_unscored_variants_never_win():
    assert decide({"original": s(None, None), "instruction": s(0.9, 0.1), "both": s(0.1, 0.1)}).kept is None
    # No phase 1 score: the instruction branch cannot be taken; the response branch decides.
    d = decide({"original": s(0.5, 0.6), "instruction": s(None, None), "both": s(0.1, 0.1), "response": s(0.8, 0.5)})
    assert d.kept == "response" and "no scores" in d.reason
    d = decide({"original": s(0.5, 0.6), "instruction": s(0.7, 0.8), "both": s(None, None), "response": s(0.1, 0.1)})
    assert d.kept is None and "'both' has no scores" in d.reason
    d = decide({"original": s(0.5, 0.6), "instruction": s(0.4, 0.8)})
    assert d.kept is None and "'response' has no scores" in d.reason


def test_top_share_keeps_the_highest_ifd_deterministically():
    ifds = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.5}
    assert top_share(ifds, 0.5) == {"b", "c"}  # c before d by id on a tie
    assert top_share(ifds, 1.0) == set(ifds)
    assert top_share(ifds, 0.01) == {"b"}  # at least one
    assert top_share({}, 0.3) == set()
    with pytest.raises(ValueError):
        top_share(ifds, 0)


# -------------------------------------------------------------- texts and ratios


def test_templates_are_the_official_strings():
    assert fill("vicuna", "Do X", "") .endswith("USER: Do X ASSISTANT:")
    assert fill("vicuna", "Do X", "data").endswith("USER: Do X\nInput:\ndata ASSISTANT:")
    assert fill("alpaca", "Do X", "") == TEMPLATES["alpaca"]["prompt_no_input"].replace("{instruction}", "Do X")
    assert fill("wizardlm", "Do X", "data") == "Do X\ndata\n\n### Response:"
    assert reverse_instruction("Paris.") == (
        "Below is the response to an instruction, please guess the corresponding instruction for the given "
        "response.\nParis.\nGenerate the instruction for the above response."
    )
    assert instruction_span("Name the capital.", "France") == "Name the capital.France"  # no separator, as official
    with pytest.raises(ValueError):
        fill("llama", "x", "")


def test_ratios_are_perplexity_ratios():
    p = Perplexities(1.0, 2.0, 0.5, 1.5)
    assert p.ifd == pytest.approx(2.718281828 ** (1.0 - 2.0))
    assert p.r_ifd == pytest.approx(2.718281828 ** (0.5 - 1.5))
    assert p.ifd_loss == 0.5 and p.r_ifd_loss == pytest.approx(1 / 3)


def test_the_selection_page_lists_every_student_setting_with_its_default():
    from pathlib import Path

    from reflection_assets.engines.selection.ifd import STUDENT_PREFIX, StudentSettings
    from reflection_assets.engines.oracle.settings import env_settings

    page = (Path(__file__).resolve().parents[2] / "docs" / "selection.md").read_text()
    for entry in env_settings(StudentSettings):
        assert f"| `{STUDENT_PREFIX}{entry.env}` | `{entry.default}` | {entry.doc} |" in page, entry.name
