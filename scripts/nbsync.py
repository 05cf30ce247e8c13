"""Edit notebooks as plain Python (jupytext percent format) and write them back without outputs.

    python scripts/nbsync.py to-py   notebooks/01_text_encoder.ipynb /tmp/01.py
    python scripts/nbsync.py to-nb   /tmp/01.py notebooks/01_text_encoder.ipynb
    python scripts/nbsync.py strip   notebooks/*.ipynb

Cell tags survive (``# %% tags=["parameters"]``); outputs, execution counts and widget state are
dropped and the kernelspec is set to ``python3`` (what Colab, papermill and nbval expect).
Needs the ``dev`` extra (jupytext).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs and run metadata; keep tags."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        keep = {k: v for k, v in cell.metadata.items() if k in ("tags",)}
        cell.metadata = nbformat.NotebookNode(keep)
        cell.pop("id", None)
    nb.metadata = nbformat.NotebookNode(
        {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    )
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def main(argv: list[str]) -> int:
    import jupytext

    if not argv:
        print(__doc__)
        return 2
    cmd, *paths = argv
    if cmd == "to-py":
        src, dst = paths
        jupytext.write(jupytext.read(src), dst, fmt="py:percent")
    elif cmd == "to-nb":
        src, dst = paths
        nb = strip(jupytext.read(src, fmt="py:percent"))
        nbformat.write(nb, dst)
    elif cmd == "strip":
        for path in paths:
            nbformat.write(strip(nbformat.read(path, as_version=4)), path)
    else:
        print(__doc__)
        return 2
    for p in paths[-1:]:
        print(f"wrote {Path(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
