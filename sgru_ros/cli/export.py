"""``sgru-stereo export``: the network as ONNX for one input size and iteration count, checked with onnxruntime."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .common import CommandError, add_model_arguments, estimator_from_args, int_type, iterations


def add_parser(sub) -> None:
    export = sub.add_parser("export", help="write the network as ONNX for one input size and iteration count, "
                                           "checked against PyTorch with onnxruntime")
    add_model_arguments(export)
    export.add_argument("--onnx", required=True, help="output .onnx file")
    export.add_argument("--height", type=int_type(32, multiple=32), required=True, help="input height (multiple of 32)")
    export.add_argument("--width", type=int_type(32, multiple=32), required=True, help="input width (multiple of 32)")
    export.add_argument("--iters", type=iterations, default=8, help="GRU iterations, fixed in the graph (default 8)")
    export.add_argument("--output-iters", type=iterations, nargs="+", default=[],
                        help="also output the disparity after these iteration counts (< --iters)")
    export.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    export.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..onnx_engine import FixedPass, export_onnx

    for flag in ("compile", "graphs"):
        if getattr(args, flag):
            raise CommandError(f"export takes no --{flag}: the ONNX graph is traced from the eager network")
    estimator = estimator_from_args(args)
    model = estimator.model.cpu()
    extra = sorted(set(args.output_iters))
    if extra and (extra[0] < 1 or extra[-1] >= args.iters):
        raise CommandError(f"--output-iters must lie in 1..{args.iters - 1}")
    start = time.perf_counter()
    names = export_onnx(model, args.onnx, args.height, args.width, args.iters, extra, args.max_disp)
    print(f"wrote {args.onnx} ({Path(args.onnx).stat().st_size / 2**20:.1f} MB, outputs {', '.join(names)}) "
          f"in {time.perf_counter() - start:.0f} s")
    if args.no_check:
        return
    import onnxruntime as ort

    from ..bench import bench_pair
    from ..inference import to_image_tensor

    left, right = (to_image_tensor(image) for image in bench_pair(args.height, args.width))
    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    got = session.run(names, {"left": left.numpy(), "right": right.numpy()})
    with torch.inference_mode():
        expected = FixedPass(model, args.iters, extra, args.max_disp)(left, right)
    for name, ours, theirs in zip(names, got, expected):
        diff = np.abs(ours - theirs.numpy())
        print(f"onnxruntime (CPU) vs PyTorch on the Motorcycle pair at {args.width}x{args.height}, {name}: "
              f"max |difference| {diff.max():.2e} px, mean {diff.mean():.2e} px")
