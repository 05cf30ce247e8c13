"""Issue 17: `--resume` refuses another run before writing anything, every failure is one line (no
traceback, no nibabel/torch text, never `weights_only=False`), nothing allocates or extracts what the
file does not hold, argument errors come before torch, `predict` says what its work is."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_msd_dataset
from test_predict import write_ct

from tdseg_lite.cli import main
from tdseg_lite.errors import UserInputError

LEAKS = ("Traceback", "weights_only=False", "Weights only load failed", "nibabel", "ImageFileError", "zlib.error")


def one_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The command's stderr, checked to be exactly one `tdseg COMMAND: error:` line without foreign text."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tdseg {command}: error: `"), err
    assert not any(leak in err for leak in LEAKS), err
    return err


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: (mtime_ns, bytes), to prove that nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(tiny_unet_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the session's trained UNet run (smoke preset) and its dataset."""
    run, data = tiny_unet_run
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", data


# --- 1, 2: --resume continues the same run or refuses before writing anything -------------------------------------
@pytest.mark.parametrize(("extra", "pattern"), [
    (["--model", "textdiffseg"], "`--model` must be the run's model (unet) on --resume"),
    (["--preset", "cpu"], "`--preset` must be the run's preset (smoke) on --resume"),
    (["--data", "OTHER"], "`--data` must be the run's dataset"),
])
def test_resume_refuses_another_model_preset_or_dataset_before_writing(
        run_copy: tuple[Path, Path], extra: list[str], pattern: str, tmp_path: Path, capsys) -> None:
    run, _ = run_copy
    other = write_msd_dataset(tmp_path / "other", n_cases=3, labels={"0": "background", "1": "pancreas",
                                                                      "2": "cancer"})
    extra = [str(other) if a == "OTHER" else a for a in extra]
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet", *extra]) == 2
    assert pattern in one_line(capsys, "train")
    assert snapshot(run) == before


def test_resume_refuses_a_dataset_whose_class_count_changed(run_copy: tuple[Path, Path], tmp_path: Path,
                                                            capsys) -> None:
    run, data = run_copy
    moved = shutil.copytree(data, tmp_path / "ds")
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = str(moved)
    (run / "config.json").write_text(json.dumps(config))
    meta = json.loads((moved / "dataset.json").read_text())
    meta["labels"] = {str(i): f"organ {i}" if i else "background" for i in range(10)}
    (moved / "dataset.json").write_text(json.dumps(meta))
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--data", str(moved), "--quiet"]) == 2
    assert "`--data` must have the run's 3 classes on --resume, got '10 classes'" in one_line(capsys, "train")
    assert snapshot(run) == before


def moved_dataset(run: Path, data: Path, tmp_path: Path) -> Path:
    """A copy of the run's dataset that the run's config.json points to (so that it can be changed in place)."""
    moved = shutil.copytree(data, tmp_path / "ds")
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = str(moved)
    (run / "config.json").write_text(json.dumps(config))
    return moved


def relabel(dataset: Path, labels: dict[str, str] | None = None, drop_cases: int = 0) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["labels"] = labels or meta["labels"]
    meta["training"] = meta["training"][: len(meta["training"]) - drop_cases]
    (dataset / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("labels", "drop", "pattern"), [
    ({"0": "background", "1": "pancreas", "2": "cancer"}, 0,
     "must have the run's labels on --resume (1 kidney, 2 tumor), got '1 pancreas, 2 cancer'"),
    (None, 1, "must hold the run's 5 cases (splits.json) on --resume, got '0 new and 1 missing case(s)'"),
])
@pytest.mark.parametrize("config_json", [True, False], ids=["config.json", "checkpoint-only"])
def test_resume_refuses_a_dataset_changed_in_place(run_copy: tuple[Path, Path], tmp_path: Path, capsys,
                                                   labels: dict[str, str] | None, drop: int, pattern: str,
                                                   config_json: bool) -> None:
    """Same path, other dataset (e.g. the pancreas phantom written over the kidney one): refused, nothing written."""
    run, data = run_copy
    moved = moved_dataset(run, data, tmp_path)
    if not config_json:  # then only the checkpoint says which dataset the run trained on
        rewrite(run / "checkpoints" / "last.pt", lambda s: s["config"].update(data_dir=str(moved)))
        (run / "config.json").unlink()
    relabel(moved, labels, drop)
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--device", "cpu"]) == 2
    err = one_line(capsys, "train")
    assert f"`{moved / 'dataset.json'}` {pattern}" in err, err
    assert snapshot(run) == before


def test_resume_checks_the_checkpoint_itself_when_config_json_is_gone(run_copy: tuple[Path, Path], capsys) -> None:
    run, _ = run_copy
    (run / "config.json").unlink()
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--model", "textdiffseg", "--quiet", "--device", "cpu"]) == 2
    assert "`--model` must be the run's model (unet)" in one_line(capsys, "train")
    assert snapshot(run) == before and not (run / "config.json").exists()


# --- 3: --out that cannot be a run folder --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "under-a-file", "read-only"])
def test_out_that_cannot_be_written_is_one_line_and_creates_nothing(kind: str, tmp_path: Path, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = {"file": blocker, "under-a-file": blocker / "run", "read-only": tmp_path / "ro" / "run"}[kind]
    if kind == "read-only":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real(p, mode))
    assert main(["train", "--out", str(out), "--preset", "smoke"]) == 2
    err = one_line(capsys, "train")
    assert {"file": "must be a folder", "under-a-file": "is a file", "read-only": "is read-only"}[kind] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["blocker", "ro"] if kind == "read-only" else ["blocker"])


def test_a_write_refused_by_the_file_system_is_one_line(tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied", str(tmp_path / "r" / "config.json"))

    monkeypatch.setattr("tdseg_lite.train_run.train_run", refuse)  # train_cli imports it lazily: gets the patch
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke"]) == 2
    assert "config.json` could not be read or written, got Permission denied" in one_line(capsys, "train")


# --- 4, 6: checkpoints that are not what tdseg train writes --------------------------------------------------------
def rewrite(path: Path, change: Any) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize(("change", "pattern"), [
    (lambda s: s.pop("config"), "must hold what tdseg train writes, got no 'config'"),
    (lambda s: s["config"].pop("plan"), "got no 'config.plan / config.labels'"),
    (lambda s: s["model"].pop(next(iter(s["model"]))), "got other weights (1 missing"),
    (lambda s: s["model"].update(extra=torch.zeros(1)), "(1 unexpected (e.g. 'extra')"),
    (lambda s: s.update(step="x"), "got a malformed 'step'"),
    (lambda s: s["config"]["plan"]["train"].update(learning_rate="abc"),
     "must hold a run plan this version can build, got one that breaks a rule (`TrainConfig.learning_rate`"),
])
def test_a_checkpoint_without_our_keys_is_one_line(run_copy: tuple[Path, Path], change: Any, pattern: str,
                                                   tmp_path: Path, capsys) -> None:
    run, _ = run_copy
    for name in ("best.pt", "last.pt"):
        if (run / "checkpoints" / name).is_file():
            rewrite(run / "checkpoints" / name, change)
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 2
    assert pattern in one_line(capsys, "evaluate")
    assert not (tmp_path / "m.json").exists()


def test_resume_from_a_checkpoint_without_the_optimizer_is_one_line(run_copy: tuple[Path, Path], capsys) -> None:
    run, _ = run_copy
    rewrite(run / "checkpoints" / "last.pt", lambda s: s.pop("optimizer"))
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--device", "cpu"]) == 2
    assert "got no 'optimizer'" in one_line(capsys, "train")
    assert snapshot(run) == before


@pytest.mark.parametrize(("change", "pattern"), [
    (lambda s: s["model"].pop(next(iter(s["model"]))), "must hold the weights of the run's model, got other weights"),
    (lambda s: s["rng"].update(torch=torch.zeros(3)), "must hold the training state tdseg train writes for this model"),
    (lambda s: s["optimizer"].update(param_groups=[]), "must hold the training state tdseg train writes for this model"),
    (lambda s: s.update(step="x"), "got a malformed 'step'"),
])
def test_resume_from_a_checkpoint_that_does_not_fit_is_one_line_and_writes_nothing(
        run_copy: tuple[Path, Path], change: Any, pattern: str, capsys) -> None:
    run, _ = run_copy
    rewrite(run / "checkpoints" / "last.pt", change)
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--device", "cpu"]) == 2
    assert pattern in one_line(capsys, "train")
    assert snapshot(run) == before  # config.json, log.csv, splits.json: byte for byte


def test_a_checkpoint_with_pickled_objects_never_suggests_unsafe_loading(run_copy: tuple[Path, Path], tmp_path: Path,
                                                                         capsys) -> None:
    run, _ = run_copy
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        if path.is_file():
            state = torch.load(path, weights_only=True)
            torch.save({**state, "extra": Path("/")}, path)  # a Python object beyond tensors and plain data
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 2
    err = one_line(capsys, "evaluate")
    assert "refused because loading them could run code" in err and "weights_only" not in err
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 2
    assert "truncated or not a torch file" in one_line(capsys, "evaluate")


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


# --- 5: devices ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_an_unknown_device_is_one_line(command: str, tmp_path: Path, capsys) -> None:
    args = {"train": ["--out", str(tmp_path / "r")],
            "evaluate": ["--run", str(tmp_path), "--out", str(tmp_path / "m.json")],
            "predict": ["--run", str(tmp_path), "--input", "ct.nii.gz", "--output", str(tmp_path / "s.nii.gz")]}
    assert main([command, *args[command], "--device", "tpu"]) == 2
    assert "`--device` must be one of auto, cpu, cuda, cuda:N, got 'tpu'" in one_line(capsys, command)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_before_anything_is_written(tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke", "--model", "unet",
                 "--device", "cuda"]) == 2
    assert "`--device` asks for CUDA, got 'cuda' on a machine without a CUDA GPU" in one_line(capsys, "train")
    assert not (tmp_path / "r").exists()


# --- 7: nothing allocates what the file does not hold --------------------------------------------------------------
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


def test_a_dataset_whose_header_lies_is_refused_without_allocating_and_leaves_no_run(tmp_path: Path,
                                                                                      capsys) -> None:
    from tdseg_lite.validate import validate_dataset

    data = write_msd_dataset(tmp_path / "ds", n_cases=2)
    lying_header(data / "imagesTr" / "case_001.nii.gz", (2000, 2000, 2000), np.int16)
    lying_header(data / "labelsTr" / "case_001.nii.gz", (2000, 2000, 2000), np.uint8)
    tracemalloc.start()
    report = validate_dataset(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, f"allocated {peak / 2**20:.0f} MiB before refusing"
    assert any("must hold at most 536,870,912 voxels" in e for e in report.errors), report.errors
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--preset", "smoke", "--device", "cpu",
                 "--quiet", "--model", "unet"]) == 2
    err = capsys.readouterr().err  # validate's own one-line form: "tdseg train: error: DATA is not a valid dataset: ..."
    assert err.count("\n") == 1 and "is not a valid dataset" in err and "must hold at most" in err, err
    assert not (tmp_path / "r").exists()  # a refused dataset leaves no run folder


def test_the_voxel_cap_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tdseg_lite.nifti_io import check_header

    write_ct(tmp_path / "ct.nii.gz", shape=(16, 16, 12))
    assert check_header(tmp_path / "ct.nii.gz")["shape"] == (16, 16, 12)
    monkeypatch.setenv("TDSEG_MAX_VOXELS", "1000")
    with pytest.raises(UserInputError, match="at most 1,000 voxels"):
        check_header(tmp_path / "ct.nii.gz")


# --- 8: archives ---------------------------------------------------------------------------------------------------
class Zeros(io.RawIOBase):
    """``n`` zero bytes, streamed (nothing of that size is ever held in memory or on disk)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        k = min(len(buf), self.left)
        buf[:k] = bytes(k)
        self.left -= k
        return k


def tar_of(path: Path, members: dict[str, int]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(Zeros(size)))
    return path


def test_a_decompression_bomb_is_refused_before_anything_is_extracted(tmp_path: Path) -> None:
    from tdseg_lite.datasets.download import extract_archive

    bomb = tar_of(tmp_path / "bomb.tar.gz", {"Task/labelsTr/a.nii": 96 << 20})
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(UserInputError, match=r"must expand at most 100x its size, got .* a decompression bomb"):
        extract_archive(bomb, tmp_path / "out", progress=False)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_a_bomb_is_refused_at_its_first_header_and_leaves_no_folder(tmp_path: Path) -> None:
    """The members are read lazily: a huge member is refused from its header, before its data is decompressed
    (here the data is not even there: the archive is cut after 64 KiB)."""
    from tdseg_lite.datasets.download import extract_archive

    bomb = tar_of(tmp_path / "bomb.tar.gz", {"Task/imagesTr/a.nii": 96 << 20, "Task/imagesTr/b.nii": 96 << 20})
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(bomb.read_bytes()[: 64 << 10])
    with pytest.raises(UserInputError, match="a decompression bomb"):
        extract_archive(cut, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_total_size_cap_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tdseg_lite.datasets.download import extract_archive

    small = tar_of(tmp_path / "small.tar.gz", {"a.nii": 4096})
    monkeypatch.setenv("TDSEG_MAX_EXTRACT_GB", "0.000001")
    with pytest.raises(UserInputError, match="must expand to at most 1e-06 GB"):
        extract_archive(small, tmp_path / "out", progress=False)
    monkeypatch.delenv("TDSEG_MAX_EXTRACT_GB")
    assert [p.name for p in extract_archive(small, tmp_path / "out", progress=False)] == ["a.nii"]


def test_a_failed_extraction_removes_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tdseg_lite.datasets.download as dl

    archive = tar_of(tmp_path / "two.tar.gz", {"a.nii": 1000, "b.nii": 1000})
    real, calls = os.replace, []

    def fail_second(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(dl.os, "replace", fail_second)
    with pytest.raises(OSError, match="No space"):
        dl.extract_archive(archive, tmp_path / "out", progress=False)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_a_failed_prepare_removes_the_folder_it_created(tmp_path: Path, capsys) -> None:
    from test_prepare import write_msd

    task = write_msd(tmp_path / "src")
    meta = json.loads((task / "dataset.json").read_text())
    meta.pop("training")
    (task / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert main(["prepare", "msd", "--task", "pancreas", "--src", str(task), "--out", str(out), "--quiet",
                 "--download-dir", str(tmp_path / "dl")]) == 2
    assert "must follow the MSD schema" in capsys.readouterr().err
    assert not out.exists()


# --- 9: argument errors before torch -------------------------------------------------------------------------------
def fake_run(folder: Path, model: str) -> Path:
    """A run folder with a config.json (TextDiffSeg schedule of 1000 steps) and an empty last.pt."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    spec = {"model": {"model": model}, "diffusion": {"num_train_timesteps": 1000}}
    (folder / "config.json").write_text(json.dumps({"plan": {"preset": "smoke", "spec": spec}, "labels": {}}))
    return folder


def test_argument_errors_are_found_before_torch_or_monai_load(tmp_path: Path) -> None:
    """One fresh interpreter runs every bad command line; torch and MONAI must still be unloaded after them
    (``--device cuda`` on a machine without CUDA may load torch, not MONAI)."""
    run = fake_run(tmp_path / "tds", "textdiffseg")
    ct = tmp_path / "ct.nii.gz"
    write_ct(ct, shape=(12, 16, 16))
    cases = [["train", "--out", str(tmp_path / "r"), "--set", "train.ae_steps=5"],
             ["train", "--out", str(tmp_path / "r"), "--set", "trian.max_steps=5"],
             ["train", "--out", str(tmp_path / "r"), "--max-minutes", "-1"],
             ["train", "--out", str(tmp_path / "r"), "--device", "tpu"],
             ["train", "--out", str(tmp_path / "r"), "--preset", "huge"],
             ["evaluate", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m.json")],
             ["evaluate", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m.txt")],
             ["evaluate", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m.json"), "--samples", "0"],
             ["predict", "--run", str(tmp_path / "nope"), "--input", str(tmp_path / "no.nii.gz"),
              "--output", str(tmp_path / "o.nii.gz")],
             ["train", "--out", str(tmp_path / "r"), "--set", "train.lr=0.1"],
             ["train", "--out", str(tmp_path / "r"), "--set", "train.batch_size=2"],
             ["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--start-timestep", "5000"],
             ["predict", "--run", str(run), "--input", str(ct), "--output", str(tmp_path / "o.nii.gz"),
              "--start", "aux", "--start-timestep", "1000"]]
    cuda = [["predict", "--run", str(run), "--input", str(ct), "--output", str(tmp_path / "o.nii.gz"),
             "--device", "cuda"],
            ["train", "--out", str(tmp_path / "r"), "--preset", "smoke", "--device", "cuda"]]
    code = ("import json, sys; from tdseg_lite.cli import main\n"
            f"codes = [main(a) for a in {json.dumps(cases)}]\n"
            "heavy = sorted(m for m in ('torch', 'monai') if m in sys.modules)\n"
            f"cuda = [main(a) for a in {json.dumps(cuda)}] if not {torch.cuda.is_available()} else []\n"
            "print(json.dumps({'codes': codes, 'heavy': heavy, 'cuda': cuda, 'monai': 'monai' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n_cuda = 0 if torch.cuda.is_available() else len(cuda)
    assert result == {"codes": [2] * len(cases), "heavy": [], "cuda": [2] * n_cuda, "monai": False}, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == len(cases) + n_cuda, proc.stderr  # one line each
    assert "did you mean train.learning_rate?" in lines[9] and "did you mean data.batch_size?" in lines[10]
    assert "`--start-timestep` must be in [0, 1000) (the run's schedule), got 5000" in lines[11]
    assert "got 1000" in lines[12]
    assert all("without a CUDA GPU" in line for line in lines[13:]), lines[13:]


# --- 10 and the minor items ----------------------------------------------------------------------------------------
def test_predict_says_what_its_work_is(run_copy: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run, _ = run_copy
    write_ct(tmp_path / "ct.nii.gz", shape=(12, 40, 40))
    assert main(["predict", "--run", str(run), "--input", str(tmp_path / "ct.nii.gz"),
                 "--output", str(tmp_path / "seg.nii.gz"), "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "tdseg predict: " in err and "window(s) of the run's 32×32×32 patch, one network pass each" in err
    assert "s per window" in err


def test_work_summary_names_what_dominates() -> None:
    from test_model import make

    from tdseg_lite.predict import work_summary

    model = make("textdiffseg")
    line = work_summary(model, 8, 2, 4)
    assert line.startswith("8 window(s) × 2 denoiser call(s) × 4 sample(s) = 64 denoiser passes; windows dominate")
    assert "samples dominates" in work_summary(model, 2, 2, 8)
    assert "the run's 32×32×32 patch (half-overlapping windows) sets it" in work_summary(model, 75, 2, 1, (32, 32, 32))
    model.set_sampling_start("aux", 500)
    assert "× 3 denoiser call(s)" in work_summary(model, 1, 5, 1)  # only the schedule's steps <= 500 run


def test_a_failed_predict_leaves_no_output_folder(tmp_path: Path, capsys) -> None:
    write_ct(tmp_path / "ct.nii.gz", shape=(12, 16, 16))
    assert main(["predict", "--run", str(tmp_path / "no_run"), "--input", str(tmp_path / "ct.nii.gz"),
                 "--output", str(tmp_path / "new" / "deeper" / "seg.nii.gz")]) == 2
    one_line(capsys, "predict")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("key", "hint"), [("train.batch_size=2", "did you mean data.batch_size?"),
                                           ("train.lr=0.01", "did you mean train.learning_rate?"),
                                           ("model.label_encoder=false", "Write --model pixel-diffusion")])
def test_misplaced_keys_name_the_right_one(key: str, hint: str, tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "r"), "--preset", "smoke", "--set", key]) == 2
    assert hint in one_line(capsys, "train")
    assert not (tmp_path / "r").exists()


def test_start_timestep_errors_name_the_flag(tmp_path: Path) -> None:
    from test_model import make

    from tdseg_lite.checks import apply_sampling_start

    with pytest.raises(UserInputError, match=r"`--start-timestep` must be in \[0, 1000\) \(the run's schedule\), "
                                             "got 5000"):
        apply_sampling_start(make("textdiffseg"), "aux", 5000)


def test_no_validation_case_is_said_plainly(capsys) -> None:
    import math

    from tdseg_lite.train_run import _report

    _report({"val": [], "steps": 3, "train_seconds": 1.0}, {"value": -math.inf, "step": -1}, Path("r"))
    err = capsys.readouterr().err
    assert "no validation Dice" in err and "val_fraction=0" in err and "-inf" not in err and "step -1" not in err


def test_preset_auto_on_resume_says_that_the_run_keeps_its_preset(run_copy: tuple[Path, Path], capsys,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = run_copy
    monkeypatch.setattr("tdseg_lite.train_run.train_run", lambda *a, **kw: 0)
    assert main(["train", "--out", str(run), "--resume", "--preset", "auto"]) == 0
    assert "--preset auto on --resume keeps the run's preset (smoke)" in capsys.readouterr().err


def test_set_field_names_are_read_without_importing_the_configs() -> None:
    """``runs.config_fields`` reads each part's class from source; it must list exactly the dataclass fields."""
    import dataclasses

    from tdseg_lite.runs import PARTS, _classes, config_fields

    classes = _classes()
    assert {p: config_fields(p) for p in PARTS} == {p: [f.name for f in dataclasses.fields(classes[p])] for p in PARTS}
