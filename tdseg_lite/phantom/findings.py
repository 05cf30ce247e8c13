"""Tumours of the CT phantom, what was measured about them, and the per-case text description.

Tumours are painted into the finished anatomy (``organs``); afterwards every fact in
the description is *measured* on the final maps, never copied from the random draw:

* size: diameter of the sphere with the tumour's volume, ``d = (6 V / pi)^(1/3)``, in cm
  (voxel count x voxel volume);
* kidney location: where the tumour centroid lies along the kidney's cranio-caudal (world
  ``z``) extent, tumour included: upper third "upper pole", lower third "lower pole", else
  "interpolar region"; "exophytic" when > 30 % of its volume lies outside the kidney outline;
  "necrotic centre" when necrosis voxels remain;
* pancreas location: the nearest point of the gland's centre line, head (first 30 %),
  body (30-70 %) or tail;
* multi-organ volumes in mL inside the scanned field.

The kidney rules live in ``kidney_tumour_finding``, which ``labels_paint`` also applies to
real label maps (where a side without kidney gives an ``"absent"`` finding: "the left kidney is not seen").

World frame: NIfTI RAS+ mm (``+x`` patient Right, ``+y`` Anterior, ``+z`` Superior).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from tdseg_lite.phantom.anatomy import (
    TUMOUR_ID0,
    Ellipsoid,
    O,
    RadialPerturbation,
    T,
    frame,
)
from tdseg_lite.phantom.organs import Anatomy

__all__ = [
    "add_decoys", "add_tumours", "describe", "equivalent_diameter_cm", "kidney_pole", "kidney_tumour_finding", "measure_findings",
]

KIDNEY_TUMOUR_MM = (10.0, 50.0)    # equivalent diameters drawn uniformly
PANCREAS_TUMOUR_MM = (12.0, 40.0)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    return frame(rng.standard_normal(3), rng.standard_normal(3))


def _kidney_lesion(anat: Anatomy, rng: np.random.Generator, host: str, tid: int | None) -> None:
    """Paint one heterogeneous tumour-like lesion in or on kidney ``host``.

    ``tid``: the tumour's organ id (labelled tumour; may grow into the perirenal fat); ``None``: a
    decoy that keeps the kidney's organ id (labelled kidney) and stays inside the kidney outline.
    """
    cv, kid = anat.canvas, anat.kidneys[host]
    u = rng.standard_normal(3)
    u[0] = min(u[0], 0.3 * abs(u[0]))  # rarely straight into the hilum (local +x is medial)
    u /= np.linalg.norm(u)
    depth = rng.uniform(0.45, 1.0)  # centre's normalised radius: near 1 -> exophytic
    centre = kid.centre + kid.rot @ (u * depth * kid.axes)
    d = rng.uniform(*KIDNEY_TUMOUR_MM)
    tum = Ellipsoid(centre, d / 2 * rng.uniform(0.85, 1.15, 3), _random_rotation(rng), RadialPerturbation(rng, 0.1))
    box = cv.box(centre, tum.extent)
    if box is None:
        return
    rho = tum.rho(cv, box)
    if tid is None:
        where = cv.organ[box] == O[host]
    else:
        near = kid.scaled(1.4).rho(cv, box) < 1  # stays in the perirenal space
        where = near & np.isin(cv.organ[box], (0, O[host]))
    painted = cv.paint(box, (rho < 1) & where, T["kidney tumour"], tid, cavity=True)
    if d >= 25 and rng.random() < 0.5:
        cv.paint(box, painted & (rho < rng.uniform(0.4, 0.6)), T["necrosis"], tid)


def add_decoys(anat: Anatomy, rng: np.random.Generator, tumours: dict[int, str], fraction: float) -> list[str]:
    """Give each tumour-free kidney, with probability ``fraction``, a **decoy**: a lesion that looks like
    a tumour (same tissue, size, shape and necrosis rules) but is labelled kidney and left out of the
    report.

    The image alone cannot tell a decoy from a tumour; the report (which names the tumour's side,
    or says the kidneys are normal) can. Decoys change only the tissue map, never the labels.

    Returns:
        The kidneys that got a decoy, e.g. ``["left kidney"]``.
    """
    out = []
    for host in ("right kidney", "left kidney"):
        if host in tumours.values() or rng.random() >= fraction:
            continue
        _kidney_lesion(anat, rng, host, None)
        out.append(host)
    return out


def _pancreas_tumour(anat: Anatomy, rng: np.random.Generator, tid: int) -> None:
    """Paint one hypodense mass centred on the pancreas centre line (organ id ``tid``)."""
    cv, curve, radius = anat.canvas, anat.pancreas_curve, anat.pancreas_radius
    i = int(rng.integers(1, len(curve) - 1))
    centre = curve[i] + rng.normal(0.0, 0.3 * radius[i], 3)
    d = rng.uniform(*PANCREAS_TUMOUR_MM)
    tum = Ellipsoid(centre, d / 2 * rng.uniform(0.85, 1.15, 3), _random_rotation(rng), RadialPerturbation(rng, 0.12))
    box = cv.box(centre, tum.extent)
    if box is None:
        return
    near = ndimage.binary_dilation(cv.organ[box] == O["pancreas"], iterations=2)
    own = np.isin(cv.organ[box], (0, O["pancreas"]))
    painted = cv.paint(box, (tum.rho(cv, box) < 1) & near & own, T["pancreas tumour"], tid, cavity=True)
    if d >= 30 and rng.random() < 0.3:
        cv.paint(box, painted & (tum.rho(cv, box) < 0.45), T["necrosis"], tid)


def add_tumours(anat: Anatomy, rng: np.random.Generator, task: str, fraction: float) -> dict[int, str]:
    """Give each candidate organ a tumour with probability ``fraction``.

    Kidney task: each kidney independently; pancreas task: the pancreas; multiorgan: all three.

    Returns:
        tumour organ-map id -> host organ name.
    """
    hosts = {"kidney": ["right kidney", "left kidney"], "pancreas": ["pancreas"],
             "multiorgan": ["right kidney", "left kidney", "pancreas"]}[task]
    out: dict[int, str] = {}
    for k, host in enumerate(hosts):
        if rng.random() >= fraction:
            continue
        tid = TUMOUR_ID0 + k
        if host == "pancreas":
            _pancreas_tumour(anat, rng, tid)
        else:
            _kidney_lesion(anat, rng, host, tid)
        out[tid] = host
    return out


def kidney_pole(z_tumour: np.ndarray, z_host: np.ndarray) -> str:
    """Where the tumour centroid lies along its kidney's cranio-caudal extent (world ``z``, mm).

    Args:
        z_tumour: world z of the tumour's voxels.
        z_host: world z of the kidney's voxels, tumour included.

    Returns:
        "upper pole" (upper third), "lower pole" (lower third) or "interpolar region".
    """
    lo, hi = float(z_host.min()), float(z_host.max())
    f = (float(z_tumour.mean()) - lo) / max(hi - lo, 1e-6)
    return "upper pole" if f > 2 / 3 else "lower pole" if f < 1 / 3 else "interpolar region"


def equivalent_diameter_cm(volume_ml: float) -> float:
    """Diameter (cm, 1 decimal) of the sphere of ``volume_ml``: ``d = (6 V / pi)^(1/3)``."""
    return round((6 * volume_ml * 1000 / np.pi) ** (1 / 3) / 10, 1)


def kidney_tumour_finding(host: str, voxels: int, voxel_ml: float, z_tumour: np.ndarray, z_host: np.ndarray,
                          outside: int, necrosis: int) -> dict[str, Any]:
    """The measured facts of one kidney tumour (the rules of the module docstring).

    Args:
        host: "right kidney" or "left kidney" (decided in world coordinates by the caller).
        voxels: the tumour's voxel count; ``voxel_ml`` the volume of one voxel.
        z_tumour, z_host: world z (mm) of the tumour's voxels and of its kidney's, tumour included.
        outside: tumour voxels outside the kidney outline (exophytic when > 30 %).
        necrosis: necrosis voxels inside the tumour (necrotic when >= 2).

    Returns:
        ``{"organ", "kind": "tumour", "size_cm", "location", "volume_ml", "exophytic", "necrotic"}``.
    """
    vol = voxels * voxel_ml
    return {"organ": host, "kind": "tumour", "size_cm": equivalent_diameter_cm(vol),
            "location": kidney_pole(z_tumour, z_host), "volume_ml": round(vol, 1),
            "exophytic": float(outside) / voxels > 0.3, "necrotic": bool(necrosis >= 2)}


def _pancreas_location(anat: Anatomy, mask: np.ndarray) -> str:
    g = anat.canvas.grid
    idx = np.nonzero(mask)
    centroid = np.array([g.xs[idx[0]].mean(), g.ys[idx[1]].mean(), g.zs[idx[2]].mean()])
    t = int(np.argmin(np.linalg.norm(anat.pancreas_curve - centroid, axis=1))) / (len(anat.pancreas_curve) - 1)
    return "head" if t < 0.3 else "body" if t < 0.7 else "tail"


def measure_findings(anat: Anatomy, tumours: dict[int, str], task: str) -> list[dict[str, Any]]:
    """Structured facts measured on the final organ/tissue maps (see the module docstring).

    Returns:
        One dict per finding: ``organ``, ``kind`` ("tumour" or "volume"), ``size_cm``,
        ``location``, ``volume_ml``; tumours add ``exophytic`` and ``necrotic``; the stomach's
        volume entry adds ``gas_ml``.
    """
    cv, ml = anat.canvas, anat.canvas.grid.voxel_ml
    out: list[dict[str, Any]] = []
    for tid, host in sorted(tumours.items()):
        mask = cv.organ == tid
        n = int(mask.sum())
        if n == 0:
            continue
        if host == "pancreas":
            vol = n * ml
            out.append({"organ": host, "kind": "tumour", "size_cm": equivalent_diameter_cm(vol),
                        "location": _pancreas_location(anat, mask), "volume_ml": round(vol, 1), "exophytic": False,
                        "necrotic": bool(((cv.tissue == T["necrosis"]) & mask).sum() >= 2)})
            continue
        zs = cv.grid.zs
        host_mask = (cv.organ == O[host]) | mask
        out.append(kidney_tumour_finding(
            host, n, ml, zs[np.nonzero(mask)[2]], zs[np.nonzero(host_mask)[2]],
            outside=int((mask & ~anat.kidney_masks[host]).sum()),
            necrosis=int(((cv.tissue == T["necrosis"]) & mask).sum())))
    if task == "multiorgan":
        for organ in ("liver", "spleen", "right kidney", "left kidney", "gallbladder", "pancreas", "stomach"):
            mask = cv.organ == O[organ]
            out.append({"organ": organ, "kind": "volume", "size_cm": None, "location": "",
                        "volume_ml": round(float(mask.sum()) * ml, 1)})
        out[-1]["gas_ml"] = round(float((mask & (cv.tissue == T["bowel gas"])).sum()) * ml, 1)
    return out


def _tumour_phrase(f: dict[str, Any]) -> str:
    kind = "hypodense mass" if f["organ"] == "pancreas" else "tumour"
    adj = " exophytic" if f.get("exophytic") else ""
    nec = " with a necrotic centre" if f.get("necrotic") else ""
    if f["organ"] == "pancreas":
        where = f"in the {f['location']} of the pancreas"
    else:
        where = f"in the {f['location']} of the {f['organ']}"
    return f"a {f['size_cm']:.1f} cm{adj} {kind}{nec} {where}"


def describe(findings: list[dict[str, Any]], task: str) -> str:
    """One or two sentences that state exactly the measured ``findings``."""
    tumours = [f for f in findings if f["kind"] == "tumour"]
    parts = [_tumour_phrase(f) for f in tumours]
    text = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 2 else " and ".join(parts)
    text = text[:1].upper() + text[1:]
    if task == "kidney":
        sick = {f["organ"] for f in tumours}
        absent = [f["organ"] for f in findings if f["kind"] == "absent"]  # real label maps: no kidney on a side
        healthy = [k for k in ("right kidney", "left kidney") if k not in sick and k not in absent]
        gone = "".join(f"; the {k} is not seen" for k in absent)
        if not sick:
            if absent:
                return f"The {healthy[0]} is normal; no renal tumour{gone}." if healthy else "No kidney seen."
            return "Both kidneys are normal; no renal tumour."
        return text + (f"; the {healthy[0]} is normal" if healthy else "") + gone + "."
    if task == "pancreas":
        return text + "." if tumours else "No pancreatic mass; the pancreas is normal."
    volumes = {f["organ"]: f for f in findings if f["kind"] == "volume"}
    vol = {k: f["volume_ml"] for k, f in volumes.items()}
    spleen = " (enlarged)" if vol["spleen"] > 300 else ""
    gb = f"gallbladder {vol['gallbladder']:.0f} mL" if vol["gallbladder"] > 0 else "gallbladder not seen"
    gas = "contains gas" if volumes["stomach"]["gas_ml"] >= 20 else "contains little or no gas"
    text = (f"Liver {vol['liver']:.0f} mL, spleen {vol['spleen']:.0f} mL{spleen}, right kidney "
            f"{vol['right kidney']:.0f} mL, left kidney {vol['left kidney']:.0f} mL, pancreas "
            f"{vol['pancreas']:.0f} mL; {gb}; the stomach {gas}.")
    return text + (" " + "; ".join(p[:1].upper() + p[1:] for p in parts) + "." if parts else "")
