"""NIfTI reading (tdseg_lite.nifti_io): the header is checked against the file and a voxel cap before anything
is allocated; a truncated or broken file is one line without nibabel text."""

from __future__ import annotations

import io
import time
import tracemalloc
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import one_line
from test_predict import write_ct

from tdseg_lite.cli import main
from tdseg_lite.errors import UserInputError


def test_a_truncated_nifti_is_one_line_without_nibabel_text(tmp_path: Path, capsys) -> None:
    write_ct(tmp_path / "ct.nii", shape=(16, 16, 12))
    data = (tmp_path / "ct.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    for name, pattern in (("cut.nii", "must hold the 6,144 bytes of voxels its header declares"),
                          ("junk.nii.gz", "must be a readable NIfTI CT")):
        assert main(["predict", "--run", str(tmp_path), "--input", str(tmp_path / name),
                     "--output", str(tmp_path / "seg.nii.gz")]) == 2
        assert pattern in one_line(capsys, "predict")


def lying_header(path: Path, shape: tuple[int, int, int], dtype: Any = np.float32) -> None:
    """A valid 4 x 4 x 4 int16 NIfTI whose header then claims ``shape`` voxels of ``dtype``."""
    raw = bytearray(nib.Nifti1Image(np.full((4, 4, 4), -1000, np.int16), np.eye(4)).to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw) if path.suffix == ".nii" else __import__("gzip").compress(bytes(raw)))


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
@pytest.mark.parametrize(("shape", "pattern"), [((2000, 2000, 2000), "must hold at most 536,870,912 voxels"),
                                                ((300, 300, 300), "must hold the 108,000,000 bytes of voxels")])
def test_a_header_larger_than_the_file_fails_fast_without_allocating(name: str, shape: tuple[int, int, int],
                                                                     pattern: str, tmp_path: Path) -> None:
    from tdseg_lite.nifti_io import check_ct

    lying_header(tmp_path / name, shape)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(UserInputError, match=pattern):
        check_ct(tmp_path / name)
    seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20, f"allocated {peak / 2**20:.0f} MiB before refusing"
    assert seconds < 5  # the issue measured 47 s and ~16 GB before the check existed


def test_the_voxel_cap_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tdseg_lite.nifti_io import check_header

    write_ct(tmp_path / "ct.nii.gz", shape=(16, 16, 12))
    assert check_header(tmp_path / "ct.nii.gz")["shape"] == (16, 16, 12)
    monkeypatch.setenv("TDSEG_MAX_VOXELS", "1000")
    with pytest.raises(UserInputError, match="at most 1,000 voxels"):
        check_header(tmp_path / "ct.nii.gz")
