"""What a kidney report says: parse it into facts, rewrite it, and build the evaluation conditions.

A case description such as "A 3.4 cm tumour in the lower pole of the left kidney; the right kidney
is normal." states facts a segmenter could use: whether there is a tumour, on which side, where
along the kidney, how large. This module makes those facts explicit, so that we can

* **paraphrase** a report while keeping its meaning (training augmentation: the model should learn
  what a report says, not one sentence pattern). ``TRAIN_STYLES`` are used in training;
  ``HELD_OUT_STYLES`` use other words and sentence shapes and are never emitted in training, so an
  evaluation with them measures generalisation to unseen phrasing;
* build the **conditions** of the text benchmark (``report_conditions``): the right report, no
  report, another case's report, the report with left and right swapped, "no renal tumour", an
  unseen paraphrase;
* encode the facts as a small **structured vector** (``StructuredReportEncoder``): a diagnostic
  "text encoder" that hands the model the facts directly. If the model uses the structured facts
  but not the language model's tokens, the limit is the language model, not the fusion.

The parser reads the phantom's descriptions ("… in the upper pole of the right kidney …", "Both
kidneys are normal; no renal tumour.") and those of ``tdseg prepare kits19`` ("a 4.1 cm tumour in
the left kidney; right kidney normal"). Anything else parses to ``None`` and is left unchanged.

No torch at import time (the encoder imports it when used).

Explained in notebooks/06_ablations.ipynb (section "What the report changes").
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tdseg_lite.errors import UserInputError

__all__ = [
    "CONDITIONS",
    "HELD_OUT_STYLES",
    "NO_TUMOUR_REPORT",
    "TRAIN_STYLES",
    "KidneyReport",
    "KidneyTumour",
    "StructuredReportEncoder",
    "paraphrase",
    "parse_report",
    "report_conditions",
    "swap_sides",
]

SIDES = ("left", "right")
LOCATIONS = ("upper pole", "interpolar region", "lower pole")
#: what the benchmark's "no renal tumour" condition says
NO_TUMOUR_REPORT = "Both kidneys are normal; no renal tumour."
#: the conditions of ``report_conditions``, in table order
CONDITIONS = ("right", "none", "other", "swapped", "no_tumour", "paraphrase")

_TUMOUR_WORDS = r"tumou?rs?|mass(?:es)?|lesions?|neoplasms?|nodules?|cancers?|carcinomas?"
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*cm")
_COUNT = re.compile(r"\b(\d+|two|three|four|several)\s+(?:" + _TUMOUR_WORDS + r")\b")
_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)  # the parser reads lower-cased text
_TUMOUR = re.compile(r"\b(?:" + _TUMOUR_WORDS + r")\b")
_NEGATION = re.compile(r"\b(no|without|normal|unremarkable|healthy|nothing)\b")
_LOCATION = {"upper pole": re.compile(r"upper pole|superior pole|cranial pole"),
             "lower pole": re.compile(r"lower pole|inferior pole|caudal pole"),
             "interpolar region": re.compile(r"interpolar|mid(?:dle)?[- ](?:portion|kidney|third)")}


@dataclass(frozen=True)
class KidneyTumour:
    """One reported tumour (or the largest of several in one kidney).

    Attributes:
        side: "left" or "right" (the patient's).
        size_cm: equivalent diameter, or ``None`` when not stated.
        location: one of ``LOCATIONS``, or ``None`` when not stated.
        exophytic: the report calls it exophytic.
        necrotic: the report mentions a necrotic centre.
        count: how many tumours the clause reports (``"2 tumours in the left kidney"``).
    """

    side: str
    size_cm: float | None = None
    location: str | None = None
    exophytic: bool = False
    necrotic: bool = False
    count: int = 1


@dataclass(frozen=True)
class KidneyReport:
    """The facts of a kidney report: the tumours, and the sides stated to be normal.

    ``tumours == ()`` with both sides normal is a tumour-free report.
    """

    tumours: tuple[KidneyTumour, ...] = ()
    normal: tuple[str, ...] = ()

    @property
    def tumour_sides(self) -> set[str]:
        """The sides with a reported tumour."""
        return {t.side for t in self.tumours}

    def swapped(self) -> KidneyReport:
        """The same report with the patient's left and right exchanged."""
        flip = {"left": "right", "right": "left"}
        tumours = sorted((replace(t, side=flip[t.side]) for t in self.tumours),
                         key=lambda t: (SIDES[::-1].index(t.side), -(t.size_cm or 0.0)))
        return KidneyReport(tuple(tumours), tuple(sorted(flip[s] for s in self.normal)))


def _parse_clause(clause: str) -> tuple[KidneyTumour | None, list[str]]:
    """One clause -> (a tumour, or None; sides stated normal)."""
    sides = _SIDE.findall(clause)
    has_tumour = bool(_TUMOUR.search(clause))
    negated = bool(_NEGATION.search(clause))
    if has_tumour and not (negated and not _SIZE.search(clause)):
        if len(set(sides)) != 1:
            return None, []
        size = _SIZE.search(clause)
        count = _COUNT.search(clause)
        n = 1 if count is None else {"two": 2, "three": 3, "four": 4, "several": 3}.get(count.group(1), None)
        n = n if n is not None else int(count.group(1))  # type: ignore[union-attr]
        location = next((name for name, rx in _LOCATION.items() if rx.search(clause)), None)
        return KidneyTumour(sides[0], float(size.group(1)) if size else None, location,
                            "exophytic" in clause or "growing out" in clause,
                            "necrotic" in clause or "necrosis" in clause, n), []
    if negated:
        both = "both" in clause or "bilateral" in clause or "either" in clause or (has_tumour and not sides)
        return None, list(SIDES) if both else sorted(set(sides))
    return None, []


def parse_report(text: str | None) -> KidneyReport | None:
    """The facts of a kidney report, or ``None`` if ``text`` does not read as one.

    Args:
        text: a case description or a whole prompt ("A computerized tomography of a kidney and
            kidney tumor. A 3.4 cm tumour in the lower pole of the left kidney; …").

    Returns:
        A ``KidneyReport``; ``None`` when no side, tumour or normal statement was found (the
        label-name prompt alone, a pancreas report, free text we cannot read).

    Example::

        >>> parse_report("A 3.2 cm tumour in the interpolar region of the left kidney; the right kidney is normal.")
        KidneyReport(tumours=(KidneyTumour(side='left', size_cm=3.2, location='interpolar region', ...),), normal=('right',))
    """
    if not isinstance(text, str) or not text.strip():
        return None
    body = text.lower()
    body = re.sub(r"^a computeri[sz]ed tomography of an? [^.]*\.", "", body).strip()
    if "kidney" not in body and "renal" not in body:
        return None
    clauses = re.split(r";|\.(?:\s|$)|,? and (?=an? |\d|the |no )|,(?= the (?!largest)| no | an? \d)", body)
    tumours: list[KidneyTumour] = []
    normal: list[str] = []
    for clause in (c.strip() for c in clauses):
        if not clause:
            continue
        tumour, ok = _parse_clause(clause)
        if tumour is not None:
            tumours.append(tumour)
        normal += [s for s in ok if s not in normal]
    normal = [s for s in normal if s not in {t.side for t in tumours}]
    if not tumours and not normal:
        return None
    tumours.sort(key=lambda t: (SIDES[::-1].index(t.side), -(t.size_cm or 0.0)))  # one order for equal facts
    return KidneyReport(tuple(tumours), tuple(sorted(normal)))


# ------------------------------------------------------------------------------------- rewriting
@dataclass(frozen=True)
class Style:
    """One way of writing a report: a phrase per tumour, per normal side, and for no tumour at all."""

    name: str
    tumour: Callable[[KidneyTumour], str]
    normal: Callable[[str], str]
    none: str
    joiner: str = "; "          # between clauses
    tumour_joiner: str = ""     # between two tumour clauses when kept in order ("" = ``joiner``)


def _size(t: KidneyTumour, unit: str = " cm") -> str:
    return "" if t.size_cm is None else f"{t.size_cm:.1f}{unit}"


def _extras(t: KidneyTumour, exo: str = " exophytic", nec: str = " with a necrotic centre") -> tuple[str, str]:
    return (exo if t.exophytic else "", nec if t.necrotic else "")


def _where(t: KidneyTumour, of: str = "of the") -> str:
    return f"the {t.location} {of} {t.side} kidney" if t.location else f"the {t.side} kidney"


def _many(t: KidneyTumour, one: str, many: str) -> str:
    return one if t.count == 1 else f"{t.count} {many}, the largest"


def _t_original(t: KidneyTumour) -> str:
    exo, nec = _extras(t)
    size = f"{_size(t)} " if t.size_cm is not None else ""
    return f"{_many(t, 'a', 'tumours')} {size}{exo.strip() + ' ' if exo else ''}tumour{nec} in {_where(t)}".replace(
        "  ", " ")


def _t_colon(t: KidneyTumour) -> str:
    exo, nec = _extras(t, " (exophytic)", ", necrotic centre")
    loc = f", {t.location}" if t.location else ""
    size = f" {_size(t)}" if t.size_cm is not None else ""
    return f"{t.side} kidney: {_many(t, 'one', 'masses')} mass{size}{exo}{loc}{nec}"


def _t_there_is(t: KidneyTumour) -> str:
    exo, nec = _extras(t, " exophytic", " containing necrosis")
    size = f"{_size(t)} " if t.size_cm is not None else ""
    return f"there is {_many(t, 'a', 'lesions')} {size}{exo.strip() + ' ' if exo else ''}renal lesion{nec} in " \
           f"{_where(t)}".replace("  ", " ")


def _t_terse(t: KidneyTumour) -> str:
    exo, nec = _extras(t, ", exophytic", ", necrotic")
    loc = f", {t.location}" if t.location else ""
    size = f", {_size(t)}" if t.size_cm is not None else ""
    return f"{t.side} renal tumour{loc}{size}{exo}{nec}"


def _t_held_sided(t: KidneyTumour) -> str:
    exo, nec = _extras(t, ", growing out of the kidney", " with central necrosis")
    loc = f" at the {t.location}" if t.location else ""
    size = f" measuring {_size(t)}" if t.size_cm is not None else ""
    return f"{t.side}-sided renal neoplasm{size}{loc}{exo}{nec}"


def _t_held_finding(t: KidneyTumour) -> str:
    exo, nec = _extras(t, " exophytic", " with necrosis")
    loc = f"{t.location} of the " if t.location else ""
    size = f"{_size(t)} " if t.size_cm is not None else ""
    return f"finding in the {loc}{t.side} kidney: {size}{exo.strip() + ' ' if exo else ''}solid " \
           f"nodule{nec}".replace("  ", " ")


#: phrasings used for training augmentation (the phantom's own phrasing is the first)
TRAIN_STYLES: tuple[Style, ...] = (
    Style("original", _t_original, lambda s: f"the {s} kidney is normal", NO_TUMOUR_REPORT, "; ", " and "),
    Style("colon", _t_colon, lambda s: f"{s} kidney: normal", "Kidneys: normal, no mass."),
    Style("there-is", _t_there_is, lambda s: f"no lesion in the {s} kidney", "There is no renal lesion.", ". "),
    Style("terse", _t_terse, lambda s: f"{s} kidney unremarkable", "No renal tumour; kidneys unremarkable."),
)
#: phrasings never used in training: the benchmark's unseen paraphrases
HELD_OUT_STYLES: tuple[Style, ...] = (
    Style("held-out-sided", _t_held_sided, lambda s: f"the {s} kidney looks healthy",
          "No evidence of a kidney neoplasm on either side."),
    Style("held-out-finding", _t_held_finding, lambda s: f"nothing abnormal in the {s} kidney",
          "Both kidneys appear healthy.", ". "),
)


def render_report(report: KidneyReport, style: Style, rng: random.Random | None = None) -> str:
    """Write ``report`` in ``style``; with ``rng`` the clauses come in a random order.

    In order (no ``rng``) the tumours come first, joined by ``style.tumour_joiner``, then the
    normal sides: the phantom's own descriptions come back unchanged with ``TRAIN_STYLES[0]``.
    """
    if not report.tumours:
        return style.none
    tumours = [style.tumour(t) for t in report.tumours]
    normal = [style.normal(s) for s in report.normal]
    if rng is None and style.tumour_joiner:
        parts = [style.tumour_joiner.join(tumours)] + normal
    else:
        parts = tumours + normal
        if rng is not None:
            rng.shuffle(parts)
    if style.joiner == ". ":
        return ". ".join(p[:1].upper() + p[1:] for p in parts) + "."
    text = style.joiner.join(parts)
    return text[:1].upper() + text[1:] + "."


def paraphrase(description: str | None, rng: random.Random, held_out: bool = False) -> str | None:
    """The same facts in another phrasing (random style and clause order), or the input if unparseable.

    Args:
        description: a case description (``None`` stays ``None``).
        rng: the random source (seed it for a reproducible choice).
        held_out: draw from ``HELD_OUT_STYLES`` (evaluation) instead of ``TRAIN_STYLES``.
    """
    report = parse_report(description)
    if report is None:
        return description
    styles = HELD_OUT_STYLES if held_out else TRAIN_STYLES
    return render_report(report, styles[rng.randrange(len(styles))], rng)


def swap_sides(text: str | None) -> str | None:
    """``text`` with the words "left" and "right" exchanged (case kept; every other word unchanged).

    Unlike ``KidneyReport.swapped`` this needs no parse, so it works on any report and keeps its
    phrasing: "A 3 cm mass in the Left kidney; right kidney normal." -> "A 3 cm mass in the Right
    kidney; left kidney normal." Used with a left↔right mirror of the image (``data.RandMirrorSidesd``).
    """
    if text is None:
        return None

    def flip(m: re.Match[str]) -> str:
        word = {"left": "right", "right": "left"}[m.group(0).lower()]
        return word.upper() if m.group(0).isupper() else word.capitalize() if m.group(0)[0].isupper() else word

    return _SIDE.sub(flip, text)


def report_conditions(descriptions: Sequence[str | None], seed: int = 0) -> dict[str, list[str | None]]:
    """The benchmark's six text conditions for a list of cases (``CONDITIONS``; ``None`` = no report).

    * ``right``: each case's own description;
    * ``none``: no description (the prompt is the label template only);
    * ``other``: the description of another case (a fixed derangement: case i gets case i+1's);
    * ``swapped``: the own description with left and right exchanged;
    * ``no_tumour``: ``NO_TUMOUR_REPORT`` for every case;
    * ``paraphrase``: the own facts in a held-out phrasing (seeded per case).

    Args:
        descriptions: one description per case, in evaluation order.
        seed: seed of the paraphrases.
    """
    if isinstance(descriptions, str) or not isinstance(descriptions, Sequence):
        raise UserInputError(f"`descriptions` must be a list with one description per case, got "
                             f"{type(descriptions).__name__}. Pass [case['description'] for case in cases].")
    n = len(descriptions)
    swapped: list[str | None] = []
    for d in descriptions:
        report = parse_report(d)
        swapped.append(d if report is None else render_report(report.swapped(), TRAIN_STYLES[0]))
    return {
        "right": list(descriptions),
        "none": [None] * n,
        "other": [descriptions[(i + 1) % n] for i in range(n)] if n > 1 else [None] * n,
        "swapped": swapped,
        "no_tumour": [NO_TUMOUR_REPORT] * n,
        "paraphrase": [paraphrase(d, random.Random(seed * 100_003 + i), held_out=True)
                       for i, d in enumerate(descriptions)],
    }


# ------------------------------------------------------------------------- the structured diagnostic
#: per-kidney token features of ``StructuredReportEncoder``
FEATURES = ("left", "right", "reported", "tumour", "normal", "upper pole", "interpolar region", "lower pole",
            "size_cm / 5", "exophytic", "necrotic", "count / 3")


def report_features(report: KidneyReport | None) -> list[list[float]]:
    """Two rows (left kidney, right kidney) of ``FEATURES`` for a report (``None``: nothing reported)."""
    rows = []
    for side in SIDES:
        row = dict.fromkeys(FEATURES, 0.0)
        row[side] = 1.0
        if report is not None:
            row["reported"] = 1.0
            mine = [t for t in report.tumours if t.side == side]
            if mine:
                t = max(mine, key=lambda x: x.size_cm or 0.0)
                row["tumour"] = 1.0
                row["size_cm / 5"] = (t.size_cm or 0.0) / 5.0
                row["exophytic"], row["necrotic"] = float(t.exophytic), float(t.necrotic)
                row["count / 3"] = sum(x.count for x in mine) / 3.0
                if t.location:
                    row[t.location] = 1.0
            elif side in report.normal or not report.tumours:
                row["normal"] = 1.0
        rows.append([row[k] for k in FEATURES])
    return rows


class StructuredReportEncoder:
    """A diagnostic stand-in for the text encoder: the parsed facts as two tokens of width D.

    Token i (left, right kidney) holds ``FEATURES`` (zero-padded to ``dim``); an unparseable or
    absent report gives tokens with only the side bits set (the null prompt too). Same interface
    as ``TextEncoder`` for ``TextConditioner``: ``encode(texts)``, ``null_embedding(batch)``, ``dim``.

    Args:
        dim: D, the token width (>= len(FEATURES)).
    """

    def __init__(self, dim: int = 16) -> None:
        if dim < len(FEATURES):
            raise UserInputError(f"`dim` must be >= {len(FEATURES)} (one entry per feature), got {dim}. Use 16.")
        self.dim = dim

    def __repr__(self) -> str:
        return f"StructuredReportEncoder(dim={self.dim})"

    def encode(self, texts: str | Sequence[str]) -> Any:
        """``TextEmbedding`` with tokens (B, 2, d_text), mask all True, pooled (B, d_text) = the token mean."""
        import torch

        from tdseg_lite.text import TextEmbedding

        texts = [texts] if isinstance(texts, str) else list(texts)
        feats = torch.zeros(len(texts), 2, self.dim)
        for i, text in enumerate(texts):
            feats[i, :, :len(FEATURES)] = torch.tensor(report_features(parse_report(text)))
        return TextEmbedding(feats, torch.ones(len(texts), 2, dtype=torch.bool), feats.mean(dim=1),
                             torch.zeros(len(texts), 2, dtype=torch.long))

    def null_embedding(self, batch_size: int = 1) -> Any:
        """The "no report" embedding repeated ``batch_size`` times."""
        return self.encode([""] * batch_size)


def describe_conditions(conditions: Mapping[str, Sequence[str | None]], index: int) -> dict[str, str | None]:
    """The six condition texts of one case (for a table or a figure caption)."""
    return {name: texts[index] for name, texts in conditions.items()}
