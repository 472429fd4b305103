"""How should a second date enter DIP? One 192 px window per crop of the real pairs, each formulation fitted alike.

The formulations (issue 34, item 2), each a plain loop over tilefill's skip network (``fast``'s: 8-64 channels,
590 iterations, Adam 0.01, input noise 0.1, EMA 0.99 over the second half; no hidden pixels):

- ``plain``: DIP from the scene alone (the paper's input);
- ``input``: the guide and where it has data fed to the network beside the noise, its output the window;
- ``gain``: the paper's input, the output an offset ``b`` and a gain ``a`` per band, the window
  ``b + (4 a - 2) (guide - 0.5)`` (0 where the guide has no data);
- ``gain+input``: the same with the guide in the input too;
- ``gain-filled`` / ``gain-filled+input``: as above, the guide's own gaps first filled from itself
  (biharmonic), so the gain applies everywhere (what tilefill ships: ``gain-filled``).

Each is scored alone and averaged half and half with biharmonic inpainting or with the guide's classical fill
(``llhm``, tilefill._multitemporal), on the gap pixels, split by whether the guide has data there and by the
pair's change reference. Scores are gap r2, mean of the bands, in the 0-1 scale of each date's own known range.

Usage
-----
    python benchmarks/studies/guide_formulations.py --out benchmarks/reports/guide-formulations
    python benchmarks/studies/guide_formulations.py --crops taizhou:0:0:0 --variants plain,gain-filled --out /tmp/g

A crop is PAIR:STRIPED:ROW:COL (PAIR taizhou or nanjing as in ``benchmarks/quality.py``; STRIPED 1: the guide has
SLC-off stripes of its own). About a minute a fit on 2 cores; the default set is 10 crops x 6 formulations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: quality.py, _shared

from quality import GUIDE_PAIRS, SLC_ANGLE, multidate_dir  # noqa: E402
from tilefill import load_config  # noqa: E402
from tilefill._classical import fill_classical  # noqa: E402
from tilefill._dip import SkipNet  # noqa: E402
from tilefill._gaps import slc_off_mask  # noqa: E402
from tilefill._metrics import band_scores  # noqa: E402
from tilefill._multitemporal import fill_llhm  # noqa: E402

VARIANTS = ("plain", "input", "gain", "gain+input", "gain-filled", "gain-filled+input")
CROPS = ("taizhou:0:0:0", "taizhou:0:208:208", "nanjing:0:0:0", "nanjing:0:300:500", "nanjing:0:500:500",
         "taizhou:1:0:208", "taizhou:1:208:0", "nanjing:1:0:0", "nanjing:1:500:500", "nanjing:1:300:500")
SIDE = 192


def load_crop(crop: str, seed: int = 3) -> dict:
    """A crop of a pair: the target with SLC-off stripes, the guide (striped or not), both scaled by their own
    known pixels, and the change reference."""
    pair, striped, y, x = crop.split(":")
    y, x = int(y), int(x)
    folder = multidate_dir()
    target_file, guide_file = (folder / f for f in GUIDE_PAIRS[pair])
    win = (slice(None), slice(y, y + SIDE), slice(x, x + SIDE))
    with rasterio.open(target_file) as ds:
        target = ds.read().astype(np.float32)[win]
    with rasterio.open(guide_file) as ds:
        guide = ds.read().astype(np.float32)[win]
    flags = {}
    for name in ("change", "unchanged"):
        with rasterio.open(target_file.parent / f"{name}.tif") as ds:
            flags[name] = (ds.read(1) > 0)[win[1:]]
    h, w = target.shape[1:]
    gaps = slc_off_mask((h, w), seed=seed, scene_width=7000, x_offset=6000, angle_deg=SLC_ANGLE)
    guide_gaps = slc_off_mask((h, w), seed=seed + 100, scene_width=7000, x_offset=6000, angle_deg=SLC_ANGLE) \
        if striped == "1" else np.zeros((h, w), bool)
    known = np.broadcast_to(~gaps, target.shape).copy()
    gknown = np.broadcast_to(~guide_gaps, target.shape).copy()

    def scale(a, k):
        lo = np.array([b[m].min() for b, m in zip(a, k)])[:, None, None]
        hi = np.array([b[m].max() for b, m in zip(a, k)])[:, None, None]
        return ((a - lo) / np.maximum(hi - lo, 1)).astype(np.float32)

    return {"target": scale(target, known), "known": known, "guide": scale(guide, gknown), "gknown": gknown, **flags}


def fit(d: dict, variant: str, cfg, seed: int = 1) -> np.ndarray:
    """One window fitted with ``variant``; the EMA of its outputs over the second half."""
    t, known = d["target"], d["known"]
    c, h, w = t.shape
    g, gk = d["guide"], d["gknown"]
    if "filled" in variant:
        g = np.where(np.isfinite(filled := fill_classical("biharmonic", g, gk)), filled, 0.5).astype(np.float32)
        applies = np.ones_like(gk)
    else:
        applies = gk
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    z = torch.rand((1, c, h, w), generator=gen) * cfg.fit.input_scale
    centred = torch.from_numpy(np.where(applies, g - 0.5, 0).astype(np.float32))[None]
    has = torch.from_numpy(gk.astype(np.float32))[None]
    with_input = variant in ("input",) or variant.endswith("+input")
    gain = variant.startswith("gain")
    net = SkipNet(c * (3 if with_input else 1), c * (2 if gain else 1), cfg.network)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.fit.learning_rate)
    target = torch.from_numpy(np.where(known, t, 0))[None]
    mask = torch.from_numpy(known.astype(np.float32))[None]
    avg = None
    for it in range(cfg.fit.iterations):
        x = z + torch.randn(z.shape, generator=gen) * cfg.fit.input_noise
        if with_input:
            x = torch.cat([x, centred, has], 1)
        out = net(x)
        img = out[:, :c] + (4 * out[:, c:] - 2) * centred if gain else out  # offset, then gain
        loss = ((img - target) ** 2 * mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it >= cfg.fit.iterations // 2:
            step = img.detach()
            avg = step.clone() if avg is None else avg.mul_(cfg.fit.ema).add_(step, alpha=1 - cfg.fit.ema)
    return np.where(known, t, avg[0].numpy())


def score(d: dict, pred: np.ndarray) -> dict:
    gaps = ~d["known"][0]
    covered = gaps & d["gknown"][0]
    splits = {"gaps": gaps, "covered": covered, "uncovered": gaps & ~d["gknown"][0],
              "covered_unchanged": covered & d["unchanged"], "covered_changed": covered & d["change"]}
    out = {}
    for name, where in splits.items():
        if where.sum() >= 20:
            s = band_scores(d["target"], pred, where)
            out[name] = {"r2": float(np.mean([b["r2"] for b in s])), "pixels": int(where.sum())}
    return out


def run(crops, variants, cfg) -> list[dict]:
    rows = []
    for crop in crops:
        d = load_crop(crop)
        t, known = d["target"], d["known"]
        bi = fill_classical("biharmonic", t, known)
        llhm = fill_llhm(t, known, d["guide"][None], d["gknown"][None])
        llhm = np.where(np.isfinite(llhm), llhm, bi)
        base = {"biharmonic": bi, "llhm": llhm}
        for name, pred in base.items():
            rows.append({"crop": crop, "variant": name, "scores": score(d, pred)})
        for v in variants:
            start = time.perf_counter()
            pred = fit(d, v, cfg)
            seconds = time.perf_counter() - start
            rows.append({"crop": crop, "variant": v, "seconds": seconds, "scores": score(d, pred)})
            for partner in ("biharmonic", "llhm"):
                mixed = np.where(known, t, 0.5 * pred + 0.5 * base[partner])
                rows.append({"crop": crop, "variant": f"{v} + {partner}", "scores": score(d, mixed)})
            print(crop, v, f"{rows[-3]['scores']['gaps']['r2']:.3f}", f"({seconds:.0f} s)", flush=True)
    return rows


def markdown(rows) -> str:
    crops = list(dict.fromkeys(r["crop"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    out = ["| formulation | " + " | ".join(crops) + " | mean |", "|---" * (len(crops) + 2) + "|"]
    for split in ("gaps", "covered", "uncovered"):
        out.append(f"| **{split}** |" + " |" * (len(crops) + 1))
        for v in variants:
            vals = [next((r["scores"].get(split, {}).get("r2") for r in rows if r["crop"] == c and r["variant"] == v),
                         None) for c in crops]
            finite = [x for x in vals if x is not None]
            out.append(f"| {v} | " + " | ".join("-" if x is None else f"{x:.3f}" for x in vals)
                       + (f" | {np.mean(finite):.3f} |" if finite else " | - |"))
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", default=",".join(CROPS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--iterations", type=int, default=None, help="fewer than fast's 590, for a smoke run")
    ap.add_argument("--out", default="benchmarks/results/guide-formulations")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config("fast", {"fit.iterations": args.iterations})
    rows = run(args.crops.split(","), args.variants.split(","), cfg)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _shared import machine_meta

    meta = {**machine_meta(torch.device("cpu")), "preset": "fast", "iterations": cfg.fit.iterations, "window": SIDE, "fit_seed": 1, "mask_seed": 3,
            "crops": args.crops.split(","), "variants": args.variants.split(",")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text("# How a second date enters DIP: gap r2 (mean of bands) per crop\n\n"
                                      f"```\n{json.dumps(meta, indent=1)}\n```\n\n" + markdown(rows))
    print(markdown(rows))
    print("wrote", out.with_suffix(".json"), out.with_suffix(".md"))


if __name__ == "__main__":
    main()
