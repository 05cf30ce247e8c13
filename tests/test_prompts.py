"""Prompt texts from label names and case descriptions (tdseg_lite.prompts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tdseg_lite.errors import UserInputError
from tdseg_lite.prompts import (
    KNOWN_DATASETS,
    TEMPLATE,
    DatasetPrompts,
    case_prompt,
    case_prompts,
    class_prompt,
    dataset_prompts,
    join_phrases,
    label_phrase,
    phrases_from_labels,
    validate_prompt,
    validate_template,
)

BTCV_ORGANS = ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
               "inferior vena cava", "portal vein and splenic vein", "pancreas", "right adrenal gland",
               "left adrenal gland"]


def test_class_prompt_uses_the_template_and_the_right_article() -> None:
    assert class_prompt("kidney") == "A computerized tomography of a kidney."
    assert class_prompt("aorta") == "A computerized tomography of an aorta."
    assert class_prompt("liver", "CT of the {label}") == "CT of the liver"
    assert TEMPLATE.format(label="x") == "A computerized tomography of a x."


def test_join_phrases() -> None:
    assert join_phrases(["kidney"]) == "kidney"
    assert join_phrases(["kidney", "kidney tumor"]) == "kidney and kidney tumor"
    assert join_phrases(["a", "b", "c"]) == "a, b and c"


def test_case_prompt_combines_labels_and_description() -> None:
    assert (case_prompt(["kidney", "kidney tumor"], "a 3 cm tumour in the left kidney")
            == "A computerized tomography of a kidney and kidney tumor. A 3 cm tumour in the left kidney.")
    assert case_prompt(["pancreas"]) == "A computerized tomography of a pancreas."
    assert case_prompt(["pancreas"], "  ") == "A computerized tomography of a pancreas."
    assert case_prompt(["liver"], "Cirrhotic liver!") == "A computerized tomography of a liver. Cirrhotic liver!"


def test_label_phrase_normalises_dataset_names() -> None:
    assert label_phrase("Right_Kidney") == "right kidney"
    assert label_phrase("  Inferior  vena cava ") == "inferior vena cava"
    assert label_phrase("IVC") == "IVC"


@pytest.mark.parametrize(("name", "labels", "phrases"), [
    ("kits19", ("kidney", "tumor"), ("kidney", "kidney tumor")),
    ("msd_task07_pancreas", ("pancreas", "cancer"), ("pancreas", "pancreas tumor")),
    ("msd_task03_liver", ("liver", "cancer"), ("liver", "liver tumor")),
    ("msd_task10_colon", ("colon cancer primaries",), ("colon tumor",)),
    ("msd_task09_spleen", ("spleen",), ("spleen",)),
    ("btcv", tuple(BTCV_ORGANS), tuple(BTCV_ORGANS)),
])
def test_known_datasets(name: str, labels: tuple, phrases: tuple) -> None:
    ds = dataset_prompts(name)
    assert ds.labels == labels and ds.phrases == phrases
    prompts = ds.class_prompts()
    assert list(prompts) == list(range(1, len(labels) + 1))
    assert all(p.startswith("A computerized tomography of a") for p in prompts.values())


def test_phantom_tasks_are_known() -> None:
    for task in ("kidney", "pancreas", "multiorgan"):
        assert dataset_prompts(f"phantom_{task}").case_prompt()


def test_phantom_label_sets_match_the_phantom() -> None:
    phantom = pytest.importorskip("tdseg_lite.phantom")
    for task, labels in phantom.LABEL_SETS.items():
        assert dataset_prompts(f"phantom_{task}").labels == tuple(v for k, v in sorted(labels.items()) if k)


def test_every_known_dataset_gives_prompts() -> None:
    for ds in KNOWN_DATASETS.values():
        assert ds.case_prompt("Some description").endswith("Some description.")


def test_dataset_names_are_forgiving_and_unknown_names_get_a_suggestion() -> None:
    assert dataset_prompts("KiTS19") is KNOWN_DATASETS["kits19"]
    assert dataset_prompts("msd-task07-pancreas") is KNOWN_DATASETS["msd_task07_pancreas"]
    with pytest.raises(UserInputError, match=r"`dataset` must be one of .*got 'kits'\. Did you mean 'kits19'\?"):
        dataset_prompts("kits")


def test_phrases_from_labels() -> None:
    assert phrases_from_labels({"0": "background", "1": "Kidney", "2": "Tumor"}) == {1: "kidney", 2: "tumor"}
    assert phrases_from_labels({2: "liver", 1: "spleen"}) == {1: "spleen", 2: "liver"}
    assert phrases_from_labels({"1": "background", "2": "liver"}) == {2: "liver"}


@pytest.mark.parametrize(("labels", "match"), [
    ({}, r"`labels` must be a non-empty mapping"),
    (["kidney"], r"`labels` must be a non-empty mapping"),
    ({"one": "kidney"}, r"`labels` keys must be class indices, got 'one'"),
    ({"0": "background"}, r"`labels` must name at least one foreground class"),
    ({"1": ""}, r"`label name` must contain text"),
])
def test_phrases_from_labels_errors(labels: object, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        phrases_from_labels(labels)


def test_case_prompts_from_dataset_json() -> None:
    meta = {"name": "KiTS19", "labels": {"0": "background", "1": "kidney", "2": "tumor"},
            "training": [{"image": "a", "label": "a", "description": "left-sided tumour"}, {"image": "b"}]}
    assert case_prompts(meta) == [
        "A computerized tomography of a kidney and kidney tumor. Left-sided tumour.",
        "A computerized tomography of a kidney and kidney tumor.",
    ]
    liver = {"name": "Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"}, "training": [{}]}
    assert case_prompts(liver) == ["A computerized tomography of a liver and liver tumor."]
    other = {"name": "mine", "labels": {"0": "background", "1": "Liver"}, "training": [{"image": "a"}]}
    assert case_prompts(other) == ["A computerized tomography of a liver."]
    assert case_prompts(other, split="test") == []
    with pytest.raises(UserInputError, match=r"`dataset_json` must be a dataset.json mapping"):
        case_prompts({"training": []})


@pytest.mark.parametrize(("value", "match"), [
    ("", r"`prompt` must contain text, got ''\. .*null_embedding"),
    ("  \n", r"`prompt` must contain text"),
    (None, r"`prompt` must be a string, not NoneType, got None\."),
    (42, r"`prompt` must be a string, not int, got 42\."),
])
def test_validate_prompt_errors(value: object, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        validate_prompt(value)


def test_validate_prompt_strips() -> None:
    assert validate_prompt("  kidney ") == "kidney"


@pytest.mark.parametrize("template", ["no field", "{label} {organ}", "{}", "{label", 3])
def test_bad_templates(template: object) -> None:
    with pytest.raises(UserInputError, match="`template` must"):
        validate_template(template)


def test_other_input_errors() -> None:
    with pytest.raises(UserInputError, match=r"`phrases` must be a non-empty list of strings, got 'kidney'"):
        join_phrases("kidney")
    with pytest.raises(UserInputError, match=r"`phrases` must be a non-empty list"):
        case_prompt([])
    with pytest.raises(UserInputError, match=r"`description` must be a string, not int"):
        case_prompt(["liver"], 5)
    with pytest.raises(UserInputError, match=r"`label` must contain text"):
        class_prompt(" ")
    with pytest.raises(UserInputError, match="needs one phrase per label"):
        DatasetPrompts("x", "X", ("a", "b"), ("a",))


def test_prompts_module_does_not_import_torch() -> None:
    code = "import sys, tdseg_lite.prompts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
