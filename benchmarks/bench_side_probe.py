"""Do the frozen text encoder's tokens carry the tumour's side, and what does it take to learn it?

    .venv/bin/python benchmarks/bench_side_probe.py                  # with and without the left↔right mirror
    .venv/bin/python benchmarks/bench_side_probe.py --steps 400 --seeds 0,1,2    # shorter

A probe, not the segmenter: a small classifier reads the cached token states of each phantom
report (the same prompts ``tdseg train`` builds: label template + description, half of them
paraphrased) and predicts two bits, "tumour in the left kidney", "tumour in the right kidney".
Its reader is the package's ``grounding.SideReader``: one pre-norm self-attention layer over the
tokens (width 64) and attention pooling with a learned query, then a linear layer. It trains on the phantom's training reports and is
scored on the 24 reports of the test phantom under three conditions: the right report, the
report with left and right swapped (its target swapped too), and an unseen paraphrase.

``--mirror P`` exchanges "left" and "right" in a share P of the training reports (and their
targets), as ``data.mirror_prob`` does together with the image. Without it the 40 training reports
are memorised; with it the side is the only thing that separates a report from its mirror.

Writes ``results/side_probe.json`` and ``.md`` (stamped: device, threads, date, commit).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import results_dir, stamp, title, write_report

from tdseg_lite.grounding import SideReader
from tdseg_lite.reports import parse_report, report_conditions, swap_sides


def sides(description: str | None) -> list[float]:
    """[tumour in the left kidney, tumour in the right kidney] as 0/1."""
    report = parse_report(description)
    named = set() if report is None else set(report.tumour_sides)
    return [float("left" in named), float("right" in named)]


def run(args: argparse.Namespace, mirror: float, seed: int, train: list[str | None], test: list[str | None],
        conditioner: Any) -> dict[str, float]:
    """Train one reader; its accuracy (both bits right) on the test reports under each condition."""
    torch.manual_seed(seed)
    reader = SideReader(conditioner.dim)
    opt = torch.optim.AdamW(reader.parameters(), lr=args.lr)
    embed = lambda texts, train_: conditioner.embed(conditioner.prompts(texts, train=train_), len(texts), "cpu")
    for _ in range(args.steps):
        batch = [train[i] for i in torch.randint(0, len(train), (args.batch,)).tolist()]
        batch = [swap_sides(d) if torch.rand(()) < mirror else d for d in batch]
        emb = embed(batch, True)
        loss = F.binary_cross_entropy_with_logits(reader(emb.tokens, emb.mask), torch.tensor([sides(d) for d in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    conds = report_conditions(test, seed=seed)
    out = {}
    with torch.no_grad():
        for cond in ("right", "swapped", "paraphrase"):
            emb = embed(conds[cond], False)
            pred = reader(emb.tokens, emb.mask) > 0
            truth = torch.tensor([sides(d) for d in conds[cond]]) > 0.5
            out[cond] = float((pred == truth).all(dim=1).float().mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--mirror", default="0,0.5", help="comma list of mirror shares to compare")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="report stem (default results/side_probe)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tdseg_lite.data import DataConfig, default_dataset, load_datalist
    from tdseg_lite.phantom import PhantomConfig, ensure_phantom
    from tdseg_lite.prompts import dataset_prompts
    from tdseg_lite.segmenter import TextConditioner
    from tdseg_lite.text import TextConfig, make_text_encoder
    from tdseg_lite.utils import artifacts_dir

    train_root = default_dataset(DataConfig(), "")
    test_root = ensure_phantom(artifacts_dir("data") / "phantom_kidney_test_24",
                               PhantomConfig(task="kidney", num_cases=24, seed=1))
    train = [e.get("description") for e in load_datalist(train_root)]
    test = [e.get("description") for e in load_datalist(test_root)]
    conditioner = TextConditioner(make_text_encoder(TextConfig()), dataset_prompts("phantom_kidney").phrases,
                                  paraphrase=0.5)
    rows = {}
    for mirror in (float(m) for m in args.mirror.split(",")):
        accs = [run(args, mirror, int(s), train, test, conditioner) for s in args.seeds.split(",")]
        rows[f"{mirror:g}"] = {c: (statistics.mean(a[c] for a in accs), statistics.pstdev(a[c] for a in accs))
                               for c in accs[0]}
        print(f"mirror {mirror:g}: " + ", ".join(f"{c} {m:.2f} ± {s:.2f}" for c, (m, s) in rows[f'{mirror:g}'].items()),
              flush=True)
    one_sided = sum(sum(sides(d)) == 1 for d in test)
    guess = (len(test) - one_sided / 2) / len(test)  # presence and "both" known, the side a coin flip
    report = {**stamp(torch.device("cpu"), args.threads), "args": vars(args), "train_reports": len(train),
              "test_reports": len(test), "side_guessing_accuracy": guess, "accuracy": rows}
    lines = [title(report, "Side probe: does a reader of the frozen tokens learn the tumour's side?"), "",
             (f"{len(train)} training reports (the phantom's), {len(test)} test reports (a phantom of another seed); "
              f"{args.steps} steps of {args.batch} reports; accuracy = both bits (left tumour, right tumour) right; "
              f"mean ± sd over seeds {args.seeds}. A reader that knows whether a kidney holds a tumour but guesses "
              f"the side of the {one_sided} one-sided reports scores {guess:.2f}."), "",
             "| mirror share | right report | swapped report | unseen paraphrase |", "|---|---|---|---|"]
    lines += [f"| {m} | " + " | ".join(f"{r[c][0]:.2f} ± {r[c][1]:.2f}" for c in ("right", "swapped", "paraphrase")) + " |"
              for m, r in rows.items()]
    write_report(Path(args.out) if args.out else results_dir(torch.device("cpu")) / "side_probe", report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
