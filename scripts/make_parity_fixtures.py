#!/usr/bin/env python3
"""The in-repository parity fixtures: the authors' own code run on a Motorcycle crop with generated weights.

    python scripts/make_parity_fixtures.py --authors /path/to/Selective-Stereo --authors-python /path/to/python \
        [--torchvision-stub DIR] [--out test/fixtures/parity]

For each variant at its released widths, a driver in the authors' interpreter builds their network
(``IGEVStereo`` / ``RAFT``), fills its state dict with the weights of ``test/fixtures/parity/weights.py``
(seeded, deterministic), and records what it returns for the pair: ``test_mode=True`` at 1 and 4
iterations, every iteration of ``test_mode=False`` and, for Selective-IGEV, the initial disparity.
The fixture file keeps the inputs (uint8), the outputs, the arguments and the state dict's layout
(names, shapes, dtypes), not the weights: the tests make them again from the seed. The authors'
repository (https://github.com/Windsrain/Selective-Stereo) is not part of this package; its interpreter
needs torch, numpy, opt_einsum and, for Selective-IGEV, timm 0.5.4 (which imports torchvision names;
``--torchvision-stub`` puts a folder holding a stand-in ``torchvision`` package first on its path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SEED = 2024
HEIGHT, WIDTH = 128, 192
ITERS = (1, 4)
ARGS = {
    "igev": {"hidden_dims": [128, 128, 128], "corr_levels": 2, "corr_radius": 4, "n_downsample": 2,
             "n_gru_layers": 3, "max_disp": 192, "mixed_precision": False, "precision_dtype": "float32",
             "corr_implementation": "reg", "shared_backbone": False, "slow_fast_gru": False},
    "raft": {"hidden_dim": 128, "hidden_dims": [128, 128, 128], "corr_levels": 4, "corr_radius": 4,
             "n_downsample": 2, "n_gru_layers": 3, "mixed_precision": False, "precision_dtype": "float32",
             "corr_implementation": "reg", "shared_backbone": False, "slow_fast_gru": False},
}

# Runs in the authors' interpreter. argv: authors checkout, variant, args JSON, weights.py, seed, pair .npz, out .pt
DRIVER = textwrap.dedent("""
    import argparse, importlib.util, json, os, sys
    authors, variant, args_json, weights_py, seed, pair_npz, out = sys.argv[1:8]
    import numpy as np, torch
    torch.set_num_threads(2)
    root = os.path.join(authors, "Selective-IGEV" if variant == "igev" else "Selective-RAFT")
    sys.path[:0] = [root, os.path.join(root, "core")]
    os.chdir(root)
    spec = importlib.util.spec_from_file_location("parity_weights", weights_py)
    weights = importlib.util.module_from_spec(spec); spec.loader.exec_module(weights)
    args = argparse.Namespace(**json.loads(args_json))
    if variant == "igev":
        import timm
        create = timm.create_model
        timm.create_model = lambda *a, **k: create(*a, **{**k, "pretrained": False})  # no download
        from core.igev_stereo import IGEVStereo as Net
    else:
        from core.raft import RAFT as Net
    model = torch.nn.DataParallel(Net(args))  # as their training script saves: keys with "module."
    layout = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    model.load_state_dict(weights.make_state(layout, int(seed)), strict=True)
    net = model.module.eval()
    pair = np.load(pair_npz)
    left, right = (torch.from_numpy(pair[k]).permute(2, 0, 1).float()[None] for k in ("left", "right"))
    result = {"variant": variant, "args": vars(args), "seed": int(seed), "layout": layout,
              "left": torch.from_numpy(pair["left"]), "right": torch.from_numpy(pair["right"]), "test_out": {}}
    with torch.no_grad():
        for iters in json.loads(pair["iters"].item()):
            out_ = net(left, right, iters=iters, test_mode=True)
            result["test_out"][iters] = (out_[-1] if isinstance(out_, tuple) else out_).float()
        result["iters"] = sorted(result["test_out"])
        train = net(left, right, iters=max(result["test_out"]), test_mode=False)
        if variant == "igev":
            result["init_disp"], train = train[0].float(), train[1]
        result["train_preds"] = [p.float() for p in train]
    torch.save(result, out)
""")


def motorcycle_crop() -> tuple[np.ndarray, np.ndarray]:
    """A HEIGHT x WIDTH crop of the Motorcycle pair at a third of its size (uint8 RGB): both views of the
    same rows and columns, textured, with a depth edge."""
    from sgru_ros.calibration import motorcycle_pair

    left, right, _ = motorcycle_pair()
    small = [cv2.resize(image, (247, 167), interpolation=cv2.INTER_AREA) for image in (left, right)]
    top, x0 = 20, 40
    return tuple(np.ascontiguousarray(image[top:top + HEIGHT, x0:x0 + WIDTH]) for image in small)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors", required=True, type=Path, help="checkout of Windsrain/Selective-Stereo")
    parser.add_argument("--authors-python", required=True, help="interpreter with torch, numpy, opt_einsum, timm")
    parser.add_argument("--torchvision-stub", type=Path, help="folder holding a stand-in torchvision package")
    parser.add_argument("--out", type=Path, default=REPO / "test" / "fixtures" / "parity")
    args = parser.parse_args()
    left, right = motorcycle_crop()
    env = dict(os.environ)
    if args.torchvision_stub:
        env["PYTHONPATH"] = f"{args.torchvision_stub}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        pair = Path(tmp) / "pair.npz"
        np.savez(pair, left=left, right=right, iters=np.array(json.dumps(list(ITERS))))
        driver = Path(tmp) / "driver.py"
        driver.write_text(DRIVER)
        for variant in ("igev", "raft"):
            out = args.out / f"{variant}_motorcycle_crop.pt"
            subprocess.run([args.authors_python, str(driver), str(args.authors.resolve()), variant,
                            json.dumps(ARGS[variant]), str(args.out.resolve() / "weights.py"), str(SEED), str(pair),
                            str(out.resolve())], check=True, env=env)
            fixture = torch.load(out, weights_only=True)
            print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB): {variant}, {len(fixture['layout'])} tensors, "
                  f"test_out at {sorted(fixture['test_out'])} iterations, mean disparity "
                  f"{fixture['test_out'][max(ITERS)].mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
