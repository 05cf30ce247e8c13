"""Does the text change the segmentation? A trained TextDiffSeg with the right, no and a wrong description.

    .venv/bin/python benchmarks/bench_text_effect.py --model /tmp/bq/models/textdiffseg.pt

``--model`` is a ``{spec, state_dict}`` file written by ``bench_quality.py --save DIR``. Each
validation case of the phantom (whose descriptions name the tumour's side, pole and size, or say
"no renal tumour") is segmented four times with the same noise:

* ``right``  — the case's own description (what the model was trained with);
* ``none``   — the label template only ("A computerized tomography of a kidney and kidney tumor.");
* ``wrong``  — the description of another validation case (a different side/size, or a tumour
  where there is none);
* ``w=0``    — classifier-free guidance scale 0: the unconditional model (the text dropped).

Reported per condition: Dice per class and the tumour false-positive volume (mL of voxels
predicted tumour outside the true tumour). Writes ``results/text_effect.json`` and ``.md`` with
device, threads, date and commit.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import load_saved_run, saved_model_parser
from common import stamp, title, write_report

from tdseg_lite.inference import nanmean, per_class_metrics, sliding_window_predict
from tdseg_lite.utils import versions

RESULTS = Path(__file__).resolve().parent / "results" / "text_effect"


def conditions(descriptions: list[str], i: int) -> dict[str, tuple[str, float]]:
    """Condition name -> (description, guidance scale) for case ``i``."""
    wrong = descriptions[(i + 1) % len(descriptions)]
    return {"right": (descriptions[i], 1.0), "none": ("", 1.0), "wrong": (wrong, 1.0), "w=0": (descriptions[i], 0.0)}


def main(argv: list[str] | None = None) -> int:
    args = saved_model_parser(__doc__.split("\n")[0], RESULTS).parse_args(argv)
    model, data = load_saved_run(args)
    cases, dcfg = data["val_cases"], data["cfg"]
    descriptions = [c.get("description", "") for c in cases]
    voxel_ml = math.prod(dcfg.spacing) / 1000.0
    rows: dict[str, list[dict[str, Any]]] = {}
    for i, case in enumerate(cases):
        image, label = case["image"][None].as_tensor(), case["label"][None].as_tensor()
        for name, (desc, w) in conditions(descriptions, i).items():
            prompt = model.text.prompts([desc or None])[0]
            probs = sliding_window_predict(model, image, prompt, roi_size=dcfg.patch_size, guidance=w,
                                           generator=torch.Generator().manual_seed(args.seed))
            m = per_class_metrics(probs, label, model.num_classes, dcfg.spacing)
            pred = probs.argmax(1)
            fp = int(((pred == 2) & (label[:, 0] != 2)).sum())
            rows.setdefault(name, []).append({"case": i, "dice": m["dice"], "tumour_fp_ml": fp * voxel_ml,
                                              "has_tumour": bool((label == 2).any()), "prompt": prompt})
        print(f"case {i}: " + ", ".join(f"{k} {rows[k][-1]['dice'][1]:.3f}" for k in rows), flush=True)
    summary = {name: {"dice_kidney": nanmean(r["dice"][0] for r in rs), "dice_tumor": nanmean(r["dice"][1] for r in rs),
                      "tumour_fp_ml": sum(r["tumour_fp_ml"] for r in rs) / len(rs),
                      "tumour_fp_ml_tumour_free": nanmean(r["tumour_fp_ml"] for r in rs if not r["has_tumour"])}
               for name, rs in rows.items()}
    report = {**stamp(torch.device("cpu"), args.threads), "model": args.model, "versions": versions(),
              "cases": len(cases), "summary": summary, "rows": rows}
    lines = [title(report, "Text effect on a trained TextDiffSeg", f"{len(cases)} validation cases"), "",
             "| condition | Dice kidney | Dice tumour | tumour FP mL / case | tumour FP mL on tumour-free cases |",
             "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['dice_kidney']:.3f} | {s['dice_tumor']:.3f} | {s['tumour_fp_ml']:.2f} | "
                     f"{s['tumour_fp_ml_tumour_free']:.2f} |")
    write_report(Path(args.out), report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
