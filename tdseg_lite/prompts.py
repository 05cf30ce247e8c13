"""Prompts: label names and per-case descriptions -> the text that conditions the model.

TextDiffSeg conditions segmentation on "a description of the anatomical structures and
pathological features" (the paper's wording). The paper gives no example prompts, so we follow the
CLIP-Driven Universal Model's class template ``"A computerized tomography of a {label}."``
and append the free-text ``description`` of a case (MSD layout) when there is one::

    >>> case_prompt(["kidney", "kidney tumor"], "A 3 cm tumour in the left kidney.")
    'A computerized tomography of a kidney and kidney tumor. A 3 cm tumour in the left kidney.'

``KNOWN_DATASETS`` holds the label set of every dataset the project converts (phantom tasks,
KiTS19, MSD Task03/07/09/10, BTCV) with the clinical phrase used for each label ("cancer" in
MSD Task07 becomes "pancreas tumor", the CLIP-Driven Universal Model's wording). Any other
MSD-layout dataset works through ``phrases_from_labels`` on its ``dataset.json`` labels.

No torch here: prompts are plain strings. The empty ``NULL_PROMPT`` is reserved for
classifier-free guidance (``TextEncoder.null_embedding``); users cannot pass it as a prompt.

Explained in notebooks/01_text_encoder.ipynb
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tdseg_lite.errors import UserInputError, require

__all__ = [
    "KNOWN_DATASETS",
    "NULL_PROMPT",
    "TEMPLATE",
    "DatasetPrompts",
    "case_prompt",
    "case_prompts",
    "class_prompt",
    "dataset_prompts",
    "join_phrases",
    "label_phrase",
    "phrases_from_labels",
    "validate_prompt",
    "validate_template",
]

#: Class template of the CLIP-Driven Universal Model, with a full stop.
TEMPLATE = "A computerized tomography of a {label}."
#: The "no text" prompt for classifier-free guidance; encoded by ``TextEncoder.null_embedding``.
NULL_PROMPT = ""
_ARTICLE = re.compile(r"\b([Aa]) \{label\}")
_BACKGROUND = {"background", "bg", "none", "clear label"}


def validate_prompt(text: Any, arg: str = "prompt") -> str:
    """Return ``text`` stripped of outer whitespace if it is a usable prompt.

    Raises:
        UserInputError: ``text`` is not a string, or is empty / whitespace only.
    """
    require(isinstance(text, str), arg, f"must be a string, not {type(text).__name__}",
            text, "Pass the prompt as text, e.g. 'A computerized tomography of a kidney.'", UserInputError)
    stripped = text.strip()
    require(stripped, arg, "must contain text", text,
            "Pass a description such as 'A computerized tomography of a kidney.' "
            "(the empty prompt is reserved: use TextEncoder.null_embedding()).", UserInputError)
    return stripped


def validate_template(template: Any) -> str:
    """Check that ``template`` is a string with exactly one ``{label}`` field and no other field."""
    require(isinstance(template, str), "template", "must be a string",
            template, f"Use e.g. {TEMPLATE!r}.", UserInputError)
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        fields = ["<unbalanced braces>"]
    require(fields == ["label"], "template", "must contain exactly one '{label}' field and no other",
            template, f"Use e.g. {TEMPLATE!r}; write literal braces as '{{{{' and '}}}}'.", UserInputError)
    return template


def label_phrase(name: Any) -> str:
    """Turn a ``dataset.json`` label name into a phrase: ``"Right_Kidney"`` -> ``"right kidney"``.

    Words in capitals only (``"IVC"``) keep their case; everything else is lower-cased.
    """
    text = validate_prompt(name, arg="label name")
    words = text.replace("_", " ").split()
    return " ".join(w if (w.isupper() and len(w) > 1) else w.lower() for w in words)


def join_phrases(phrases: Sequence[str]) -> str:
    """``["a"]`` -> ``"a"``; ``["a", "b"]`` -> ``"a and b"``; ``["a", "b", "c"]`` -> ``"a, b and c"``."""
    require(phrases and not isinstance(phrases, str), "phrases", "must be a non-empty list of strings",
            phrases, "Pass e.g. ['kidney', 'kidney tumor'].", UserInputError)
    items = [validate_prompt(p, arg="phrases[]") for p in phrases]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def class_prompt(label: str, template: str = TEMPLATE) -> str:
    """One prompt for one class: ``template.format(label=label)`` (the CLIP-Driven Universal Model's template).

    The article before ``{label}`` follows the label: "... of an aorta.", "... of a liver."
    """
    label = validate_prompt(label, arg="label")
    template = validate_template(template)
    if label[0].lower() in "aeiou":
        template = _ARTICLE.sub(lambda m: m.group(1) + "n {label}", template)
    return template.format(label=label)


def _as_sentence(text: str) -> str:
    """Capitalise the first letter and end with a full stop (descriptions are free text)."""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def case_prompt(phrases: Sequence[str], description: str | None = None, template: str = TEMPLATE) -> str:
    """One prompt per case: the template over all label phrases, then the case description.

    Args:
        phrases: foreground label phrases, e.g. ``["kidney", "kidney tumor"]``.
        description: optional free text for this case (``dataset.json`` ``description``).
        template: a string with one ``{label}`` field.

    Returns:
        e.g. ``"A computerized tomography of a kidney and kidney tumor. Left-sided tumour."``
    """
    text = class_prompt(join_phrases(phrases), template)
    if isinstance(description, str) and not description.strip():
        description = None  # an empty description field means "no description"
    if description is not None:
        text = f"{text} {_as_sentence(validate_prompt(description, arg='description'))}"
    return text


@dataclass(frozen=True)
class DatasetPrompts:
    """The label set of one dataset and the phrase used in prompts for each foreground class.

    Attributes:
        name: key in ``KNOWN_DATASETS``.
        title: human-readable dataset name.
        labels: foreground names as in the dataset's ``dataset.json``, class 1, 2, ... in order.
        phrases: the clinical phrase for each label (same order), used in the prompts.
    """

    name: str
    title: str
    labels: tuple[str, ...]
    phrases: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.phrases) or not self.labels:
            raise UserInputError(f"`DatasetPrompts({self.name!r})` needs one phrase per label, got "
                                 f"{len(self.labels)} labels and {len(self.phrases)} phrases. Fix the table.")

    def class_prompts(self, template: str = TEMPLATE) -> dict[int, str]:
        """``{class index: prompt}`` for every foreground class (index 1 is the first label)."""
        return {i: class_prompt(p, template) for i, p in enumerate(self.phrases, start=1)}

    def case_prompt(self, description: str | None = None, template: str = TEMPLATE) -> str:
        """The combined prompt of one case of this dataset (see ``case_prompt``)."""
        return case_prompt(self.phrases, description, template)


def _ds(name: str, title: str, pairs: Sequence[tuple[str, str]]) -> DatasetPrompts:
    return DatasetPrompts(name, title, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))


_BTCV = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
         "aorta", "inferior vena cava", "portal vein and splenic vein", "pancreas",
         "right adrenal gland", "left adrenal gland")

_PHANTOM_ORGANS = {"spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta",
                   "inferior vena cava", "pancreas"}

#: Every dataset the project knows, by name. Phrases follow the CLIP-Driven Universal Model.
KNOWN_DATASETS: dict[str, DatasetPrompts] = {
    d.name: d
    for d in (
        _ds("phantom_kidney", "Phantom: kidney and kidney tumour",
            [("kidney", "kidney"), ("tumor", "kidney tumor")]),
        _ds("phantom_pancreas", "Phantom: pancreas and pancreas tumour",
            [("pancreas", "pancreas"), ("cancer", "pancreas tumor")]),
        _ds("phantom_multiorgan", "Phantom: 9 abdominal organs (BTCV names and order)",
            [(o, o) for o in _BTCV if o in _PHANTOM_ORGANS]),
        _ds("kits19", "KiTS19 kidney tumour", [("kidney", "kidney"), ("tumor", "kidney tumor")]),
        _ds("msd_task03_liver", "MSD Task03 liver", [("liver", "liver"), ("cancer", "liver tumor")]),
        _ds("msd_task07_pancreas", "MSD Task07 pancreas",
            [("pancreas", "pancreas"), ("cancer", "pancreas tumor")]),
        _ds("msd_task09_spleen", "MSD Task09 spleen", [("spleen", "spleen")]),
        _ds("msd_task10_colon", "MSD Task10 colon", [("colon cancer primaries", "colon tumor")]),
        _ds("btcv", "BTCV multi-organ (13 organs)", [(o, o) for o in _BTCV]),
    )
}


def dataset_prompts(name: str) -> DatasetPrompts:
    """The ``DatasetPrompts`` of a known dataset; unknown names get the nearest suggestion."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    near = difflib.get_close_matches(key, list(KNOWN_DATASETS), n=1)
    hint = f"Did you mean {near[0]!r}? " if near and key not in KNOWN_DATASETS else ""
    require(key in KNOWN_DATASETS, "dataset", f"must be one of {sorted(KNOWN_DATASETS)}", name,
            f"{hint}For another MSD-layout dataset use phrases_from_labels(dataset_json['labels']).", UserInputError)
    return KNOWN_DATASETS[key]


def phrases_from_labels(labels: Mapping[Any, Any]) -> dict[int, str]:
    """Foreground phrases from a ``dataset.json`` ``"labels"`` field.

    Args:
        labels: ``{"0": "background", "1": "kidney", "2": "tumor"}`` (keys may be int or str).

    Returns:
        ``{1: "kidney", 2: "tumor"}``: background (class 0 or a background name) dropped.
    """
    require(isinstance(labels, Mapping) and labels, "labels", "must be a non-empty mapping of class index to name",
            labels, 'Use the dataset.json form {"0": "background", "1": "kidney"}.', UserInputError)
    out: dict[int, str] = {}
    for key, name in labels.items():
        try:
            index: int | None = int(key)
        except (TypeError, ValueError):
            index = None
        require(index is not None, "labels", "keys must be class indices", key,
                'Use the dataset.json form {"0": "background", "1": "kidney"}.', UserInputError)
        phrase = label_phrase(name)
        if index != 0 and phrase.lower() not in _BACKGROUND:
            out[index] = phrase
    require(out, "labels", "must name at least one foreground class",
            dict(labels), 'Add e.g. "1": "kidney" to the labels of dataset.json.', UserInputError)
    return dict(sorted(out.items()))


def case_prompts(dataset_json: Mapping[str, Any], split: str = "training", template: str = TEMPLATE) -> list[str]:
    """One combined prompt per case of ``dataset_json[split]`` (label phrases + description).

    A dataset whose label names equal those of a ``KNOWN_DATASETS`` entry uses its curated
    phrases ("cancer" -> "pancreas tumor"); any other dataset uses ``phrases_from_labels``.
    """
    require(isinstance(dataset_json, Mapping) and "labels" in dataset_json, "dataset_json",
            "must be a dataset.json mapping with a 'labels' field", type(dataset_json).__name__,
            "Load it with json.load(open('DATASET/dataset.json')).", UserInputError)
    phrases = list(phrases_from_labels(dataset_json["labels"]).values())
    for known in KNOWN_DATASETS.values():
        if [label_phrase(x) for x in known.labels] == phrases:
            phrases = list(known.phrases)
            break
    cases = dataset_json.get(split, [])
    return [case_prompt(phrases, c.get("description") if isinstance(c, Mapping) else None, template)
            for c in cases]
