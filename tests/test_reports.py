"""Kidney reports: parsing, paraphrases (train vs held-out), the benchmark's conditions, the structured encoder."""

from __future__ import annotations

import random

import pytest
import torch

from tdseg_lite.errors import UserInputError
from tdseg_lite.reports import (
    CONDITIONS,
    HELD_OUT_STYLES,
    NO_TUMOUR_REPORT,
    TRAIN_STYLES,
    KidneyReport,
    KidneyTumour,
    StructuredReportEncoder,
    paraphrase,
    parse_report,
    render_report,
    report_conditions,
    swap_sides,
)

PHANTOM = [
    "A 3.4 cm tumour with a necrotic centre in the lower pole of the left kidney; the right kidney is normal.",
    ("A 3.2 cm tumour in the interpolar region of the right kidney and a 3.5 cm tumour with a necrotic centre in the "
     "interpolar region of the left kidney."),
    "A 2.5 cm exophytic tumour in the upper pole of the right kidney; the left kidney is normal.",
    "Both kidneys are normal; no renal tumour.",
]
#: words only the held-out phrasings use: a training paraphrase must never contain them
HELD_OUT_WORDS = ("neoplasm", "-sided", "nodule", "healthy", "nothing abnormal", "either side", "finding in")


def test_parse_phantom_reports() -> None:
    first = parse_report(PHANTOM[0])
    assert first == KidneyReport((KidneyTumour("left", 3.4, "lower pole", False, True),), ("right",))
    both = parse_report(PHANTOM[1])
    assert both is not None and both.tumour_sides == {"left", "right"} and both.normal == ()
    assert parse_report(PHANTOM[2]).tumours[0].exophytic
    assert parse_report(PHANTOM[3]) == KidneyReport((), ("left", "right"))


def test_parse_prepare_reports_and_non_reports() -> None:
    kits = parse_report("a 4.1 cm tumour in the left kidney; right kidney normal")
    assert kits == KidneyReport((KidneyTumour("left", 4.1),), ("right",))
    several = parse_report("2 tumours in the right kidney, the largest 3.1 cm; left kidney normal")
    assert several.tumours[0].count == 2 and several.tumours[0].size_cm == 3.1
    assert parse_report("A computerized tomography of a kidney and kidney tumor.") is None
    assert parse_report("No pancreatic mass; the pancreas is normal.") is None
    assert parse_report(None) is None and parse_report("  ") is None


def test_the_phantom_phrasing_round_trips() -> None:
    for text in PHANTOM:
        assert render_report(parse_report(text), TRAIN_STYLES[0]) == text


@pytest.mark.parametrize("style", TRAIN_STYLES + HELD_OUT_STYLES, ids=lambda s: s.name)
def test_every_style_keeps_the_facts(style) -> None:
    for text in PHANTOM:
        report = parse_report(text)
        for seed in range(4):
            assert parse_report(render_report(report, style, random.Random(seed))) == report


def test_paraphrase_is_deterministic_per_seed_and_never_held_out() -> None:
    seen = set()
    for seed in range(200):
        for text in PHANTOM:
            out = paraphrase(text, random.Random(seed))
            assert out == paraphrase(text, random.Random(seed))
            assert not any(w in out.lower() for w in HELD_OUT_WORDS), out
            assert parse_report(out) == parse_report(text)
            seen.add(out)
    assert len(seen) > 3 * len(PHANTOM)  # it really varies the phrasing
    held = paraphrase(PHANTOM[0], random.Random(0), held_out=True)
    assert any(w in held.lower() for w in HELD_OUT_WORDS) and parse_report(held) == parse_report(PHANTOM[0])
    assert paraphrase("free text we cannot read", random.Random(0)) == "free text we cannot read"


def test_report_conditions_on_fixed_strings() -> None:
    conds = report_conditions(PHANTOM[:3] + [PHANTOM[3]], seed=0)
    assert list(conds) == list(CONDITIONS)
    assert conds["right"] == PHANTOM[:4]
    assert conds["none"] == [None] * 4
    assert conds["other"] == PHANTOM[1:4] + [PHANTOM[0]]
    assert conds["swapped"][0] == ("A 3.4 cm tumour with a necrotic centre in the lower pole of the right kidney; "
                                   "the left kidney is normal.")
    assert conds["swapped"][3] == PHANTOM[3]
    assert conds["no_tumour"] == [NO_TUMOUR_REPORT] * 4
    assert all(parse_report(p) == parse_report(r) for p, r in zip(conds["paraphrase"], PHANTOM))
    assert conds["paraphrase"] != PHANTOM[:4]
    with pytest.raises(UserInputError, match="descriptions"):
        report_conditions("one string")


def test_swap_sides_exchanges_whole_words_and_keeps_case() -> None:
    assert swap_sides("A 3 cm mass in the Left kidney; right kidney normal. LEFT.") == \
        "A 3 cm mass in the Right kidney; left kidney normal. RIGHT."
    assert swap_sides("leftover brightness, no side") == "leftover brightness, no side"
    assert swap_sides(None) is None and swap_sides("") == ""
    for report in PHANTOM:  # agrees with the parsed swap and is its own inverse
        assert parse_report(swap_sides(report)) == parse_report(report).swapped()
        assert swap_sides(swap_sides(report)) == report


def test_structured_encoder_tokens() -> None:
    enc = StructuredReportEncoder()
    emb = enc.encode([PHANTOM[0], "no report here"])
    assert emb.tokens.shape == (2, 2, 16) and emb.mask.all()
    left, right = emb.tokens[0]
    assert left[0] == 1 and left[3] == 1 and left[7] == 1  # left, tumour, lower pole
    assert right[1] == 1 and right[3] == 0 and right[4] == 1  # right, no tumour, normal
    torch.testing.assert_close(emb.tokens[1], enc.null_embedding(1).tokens[0])
    swapped = enc.encode([report_conditions([PHANTOM[0]])["swapped"][0]]).tokens[0]
    torch.testing.assert_close(swapped[0, 2:], right[2:])
    with pytest.raises(UserInputError, match="dim"):
        StructuredReportEncoder(dim=4)
