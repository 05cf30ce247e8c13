"""Re-score a model trained by ``bench_quality.py --save DIR`` with other sampler settings (no retraining).

    .venv/bin/python benchmarks/bench_sampler.py --model /tmp/bq/models/textdiffseg.pt --grid 2x4,5x4,10x4

Same protocol as ``bench_quality.py`` (cpu preset data, whole validation volumes, sliding windows,
``inference.evaluate``); only the DDIM steps × samples change. Writes ``results/quality_sampler.{json,md}``
(atomically) with device, threads, date and commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import CLASSES, load_saved_run, saved_model_parser
from common import stamp, title, write_report

from tdseg_lite.inference import evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "quality_sampler"


def main(argv: list[str] | None = None) -> int:
    ap = saved_model_parser(__doc__.split("\n")[0], RESULTS)
    ap.add_argument("--grid", default="2x4,5x4,10x4", help="DDIM steps x samples settings")
    args = ap.parse_args(argv)
    model, data = load_saved_run(args)
    dcfg, rows = data["cfg"], []
    for item in args.grid.split(","):
        steps, samples = (int(v) for v in item.split("x"))
        r = evaluate(model, data["val_loader"], roi_size=dcfg.patch_size, spacing=dcfg.spacing, class_names=CLASSES,
                     steps=steps, samples=samples, generator=torch.Generator().manual_seed(args.seed))
        rows.append({"steps": steps, "samples": samples, "dice": r["mean"]["dice"], "hd95": r["mean"]["hd95_mm"],
                     "hd95_undefined": r["undefined"]["hd95_mm"], "seconds_per_case": r["seconds_per_case"]})
        print(json.dumps(rows[-1]), flush=True)
    report = {**stamp(torch.device("cpu"), args.threads), "model": args.model, "n_val": data["n_val"],
              "rows": rows}
    lines = [title(report, "One trained TextDiffSeg, several samplers",
                   f"{data['n_val']} whole validation volumes"), "",
             "| DDIM steps × samples | Dice kidney | Dice tumour | HD95 kidney mm | HD95 tumour mm (n undef) | s / case |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} × {r['samples']} | {r['dice']['kidney']:.3f} | {r['dice']['tumor']:.3f} | "
                     f"{r['hd95']['kidney']:.1f} | {r['hd95']['tumor']:.1f} ({r['hd95_undefined']['tumor']}) | "
                     f"{r['seconds_per_case']:.2f} |")
    write_report(Path(args.out), report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
