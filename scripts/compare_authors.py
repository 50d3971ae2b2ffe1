#!/usr/bin/env python3
"""`sgru-stereo infer` against the authors' own code on one sequence, whole processes, on the CPU.

    python scripts/compare_authors.py --authors /path/to/Selective-Stereo --authors-python /path/to/python \
        --checkpoint official_igev.pth --variant igev [--frames 2 6 --rounds 3] [--iters 8 --height 256 \
        --width 384] [--compile]
    python scripts/compare_authors.py ... --interleaved 5

Both sides read the same PNG sequence (the Motorcycle pair resized to --width x --height, repeated) and write
each disparity to a .npy file. Each side runs as a separate process twice, with the two --frames counts; the
steady-state time per frame is (T_long - T_short) / (frames_long - frames_short), so start-up, imports and
model loading cancel out. With --rounds N the four runs repeat N times, alternating, and each T is the fastest
of its N (the machine's speed wanders by 15 % or more within minutes; a slow spell in one run skews a ratio).
--interleaved N measures the steadier way instead: one process of the authors' interpreter runs both networks on
the same pair, a pass of each in turn, N times (this package needs only torch and numpy there).

The authors' side is a small driver that does what their demo_imgs.py does per frame (PIL load, InputPadder,
model(test_mode=True), unpad, save) on the CPU; their repository is not part of this package (fetch
https://github.com/Windsrain/Selective-Stereo). Its interpreter needs torch and, for Selective-IGEV, timm.
Prints both times, the ratio, and the largest difference between the disparities.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from sgru_ros.bench import bench_pair
from sgru_ros.io import write_image_rgb

# Runs in the authors' interpreter: their network from the checkpoint, and ``authors_disparity`` doing per frame
# what their demo_imgs.py does. torch._dynamo is imported before the torchvision stand-in (when one is given) so
# it does not probe it; timm's pretrained download is switched off (the checkpoint has the weights).
AUTHORS_MODEL = textwrap.dedent("""
    import sys, glob, os
    authors, variant, ckpt, left_glob, right_glob, iters, threads, stub = sys.argv[1:9]
    import torch, torch._dynamo, numpy as np
    from PIL import Image
    torch.set_num_threads(int(threads))
    if stub:
        sys.path.insert(0, os.path.dirname(stub)); __import__(os.path.basename(stub)[:-3])
    root = os.path.join(authors, "Selective-IGEV" if variant == "igev" else "Selective-RAFT")
    sys.path[:0] = [root, os.path.join(root, "core")]
    os.chdir(root)
    import argparse
    if variant == "igev":
        import timm
        create = timm.create_model
        timm.create_model = lambda *a, **k: create(*a, **{**k, "pretrained": False})
        from core.igev_stereo import IGEVStereo as Net
        args = argparse.Namespace(hidden_dims=[128] * 3, corr_implementation="reg", shared_backbone=False,
                                  corr_levels=2, corr_radius=4, n_downsample=2, slow_fast_gru=False,
                                  n_gru_layers=3, max_disp=192, mixed_precision=False, precision_dtype="float32")
    else:
        from core.raft import RAFT as Net
        args = argparse.Namespace(hidden_dims=[128] * 3, hidden_dim=128, corr_implementation="reg",
                                  shared_backbone=False, corr_levels=4, corr_radius=4, n_downsample=2,
                                  slow_fast_gru=False, n_gru_layers=3, mixed_precision=False,
                                  precision_dtype="float32")
    from core.utils.utils import InputPadder
    model = torch.nn.DataParallel(Net(args))
    model.load_state_dict(torch.load(ckpt, map_location="cpu"))
    model = model.module.eval()
    def load(path):
        return np.array(Image.open(path)).astype(np.uint8)[..., :3]
    def authors_disparity(left, right):
        image1, image2 = (torch.from_numpy(img).permute(2, 0, 1).float()[None] for img in (left, right))
        padder = InputPadder(image1.shape, divis_by=32)
        image1, image2 = padder.pad(image1, image2)
        with torch.no_grad():
            disp = model(image1, image2, iters=int(iters), test_mode=True)
        disp = disp[-1] if isinstance(disp, tuple) else disp  # Selective-RAFT: (low-res, full-res)
        return padder.unpad(disp).cpu().numpy().squeeze()
""")

# The whole-process run: every pair of the sequence, each disparity saved.
AUTHORS_DRIVER = AUTHORS_MODEL + textwrap.dedent("""
    out = sys.argv[9]
    for l, r in zip(sorted(glob.glob(left_glob)), sorted(glob.glob(right_glob))):
        np.save(os.path.join(out, os.path.basename(l)[:-4] + ".npy"), authors_disparity(load(l), load(r)))
""")

# --interleaved: both networks in the authors' process (the package needs only torch and numpy there), one
# pass of each in turn on the first pair; prints the seconds of every pass and the largest difference as JSON.
INTERLEAVED_DRIVER = AUTHORS_MODEL + textwrap.dedent("""
    import json, time
    rounds, package_root, compile_ = int(sys.argv[9]), sys.argv[10], sys.argv[11] == "compile"
    sys.path.insert(0, package_root)
    from sgru_ros.inference import StereoEstimator
    estimator = StereoEstimator.from_checkpoint(ckpt, variant=variant, device="cpu", compile=compile_)
    left, right = load(sorted(glob.glob(left_glob))[0]), load(sorted(glob.glob(right_glob))[0])
    sides = {"authors": lambda: authors_disparity(left, right),
             "sgru_ros": lambda: estimator.estimate(left, right, iters=int(iters)).disparity}
    first = {name: run() for name, run in sides.items()}  # warm-up (and --compile's compilation)
    sign = -1.0 if variant == "raft" else 1.0  # the authors' Selective-RAFT returns x-flow
    times = {name: [] for name in sides}
    for round_ in range(rounds):
        for name in sorted(sides, reverse=round_ % 2 == 1):  # who goes first alternates
            run = sides[name]
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    difference = float(np.abs(first["sgru_ros"] - sign * first["authors"]).max())
    print(json.dumps({"times": times, "difference": difference}))
""")


def write_sequence(folder: Path, frames: int, height: int, width: int) -> tuple[str, str]:
    for side, image in zip(("left", "right"), bench_pair(height, width)):
        (folder / side).mkdir(parents=True)
        for i in range(frames):
            write_image_rgb(folder / side / f"{i:04d}.png", image)
    return str(folder / "left" / "*.png"), str(folder / "right" / "*.png")


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def authors_command(args: argparse.Namespace, driver: str, left_glob: str, right_glob: str, *extra: str) -> list[str]:
    return [args.authors_python, "-c", driver, args.authors, args.variant, args.checkpoint, left_glob, right_glob,
            str(args.iters), str(args.threads), args.torchvision_stub, *extra]


def ours_command(args: argparse.Namespace, left_glob: str, right_glob: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "sgru_ros.cli", "infer", "--checkpoint", args.checkpoint, "--variant", args.variant,
            "--device", "cpu", "--threads", str(args.threads), "--left", left_glob, "--right", right_glob,
            "--out", str(out), "--format", "npy", "--iters", str(args.iters), "--no-progress",
            *["--compile"] * args.compile]


def whole_processes(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> None:
    """`sgru-stereo infer` and the authors' driver over --frames pairs, as whole processes."""
    short, long = args.frames
    times: dict[str, dict[int, float]] = {"authors": {}, "sgru-stereo infer": {}}
    diffs: list[float] = []
    if args.compile:  # untimed: inductor's on-disk cache is then warm for every timed run alike
        left_glob, right_glob = write_sequence(tmp / "cache_warm_up", 1, args.height, args.width)
        (tmp / "cache_warm_up" / "out").mkdir()
        subprocess.run(ours_command(args, left_glob, right_glob, tmp / "cache_warm_up" / "out"), check=True, env=env,
                       stdout=subprocess.DEVNULL)
    for round_ in range(args.rounds):
        for frames in (short, long):
            folder = tmp / f"round{round_}" / f"seq{frames}"
            left_glob, right_glob = write_sequence(folder, frames, args.height, args.width)
            outs = {name: folder / name.split()[0] for name in times}
            for out in outs.values():
                out.mkdir()
            commands = {
                "authors": authors_command(args, AUTHORS_DRIVER, left_glob, right_glob, str(outs["authors"])),
                "sgru-stereo infer": ours_command(args, left_glob, right_glob, outs["sgru-stereo infer"])}
            took = {name: timed(command, env) for name, command in commands.items()}
            for name, seconds in took.items():
                times[name][frames] = min(seconds, times[name].get(frames, math.inf))
            print(f"  round {round_ + 1}, {frames} frames: " + ", ".join(f"{name} {seconds:.2f} s"
                                                                         for name, seconds in took.items()))
            sign = -1.0 if args.variant == "raft" else 1.0  # the authors' Selective-RAFT returns x-flow
            compared = [np.abs(np.load(ours) - sign * np.load(outs["authors"] / ours.name)).max()
                        for ours in sorted(outs["sgru-stereo infer"].glob("*.npy"))]
            if len(compared) != frames:
                raise SystemExit(f"expected {frames} disparities from each side, compared {len(compared)}")
            diffs += compared
    per_frame = {name: (t[long] - t[short]) / (long - short) for name, t in times.items()}
    print(f"Selective-{args.variant.upper()}, {args.width}x{args.height}, {args.iters} iterations, fp32, "
          f"CPU, {args.threads} threads{', ours --compile' if args.compile else ''}; whole processes over {short} "
          f"and {long} frames, fastest of "
          f"{args.rounds} round(s)")
    for name, t in times.items():
        print(f"  {name:18s} {t[short]:7.2f} s / {t[long]:7.2f} s  ->  {per_frame[name]:6.3f} s per frame")
    print(f"  ratio (ours / authors'): {per_frame['sgru-stereo infer'] / per_frame['authors']:.2f}")
    print(f"  largest |difference| between the disparities: {max(diffs):.2e} px")


def interleaved(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> None:
    """Both networks in one process of the authors' interpreter, one pass of each in turn."""
    left_glob, right_glob = write_sequence(tmp / "pair", 1, args.height, args.width)
    package_root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(authors_command(args, INTERLEAVED_DRIVER, left_glob, right_glob, str(args.interleaved),
                                          package_root, "compile" if args.compile else "eager"),
                          check=True, env=env, stdout=subprocess.PIPE, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    times = {name: np.array(seconds) for name, seconds in result["times"].items()}
    print(f"Selective-{args.variant.upper()}, {args.width}x{args.height}, {args.iters} iterations, fp32, "
          f"CPU, {args.threads} threads{', ours compiled' if args.compile else ''}; one process, the two networks "
          f"alternating, {args.interleaved} rounds")
    for name, seconds in times.items():
        print(f"  {name:9s} fastest {seconds.min():6.3f} s, median {np.median(seconds):6.3f} s "
              f"({' '.join(f'{t:.2f}' for t in seconds)})")
    print(f"  ratio (ours / authors'): fastest {times['sgru_ros'].min() / times['authors'].min():.2f}, "
          f"median {np.median(times['sgru_ros']) / np.median(times['authors']):.2f}")
    print(f"  largest |difference| between the disparities: {result['difference']:.2e} px")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", required=True, help="checkout of github.com/Windsrain/Selective-Stereo")
    parser.add_argument("--authors-python", default=sys.executable, help="interpreter for the authors' code")
    parser.add_argument("--torchvision-stub", default="",
                        help="a .py module imported before timm in the authors' process (when the available "
                             "torchvision wheel does not load with a CPU-only torch)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint in the authors' format")
    parser.add_argument("--variant", choices=("igev", "raft"), required=True)
    parser.add_argument("--frames", type=positive, nargs=2, default=[2, 6], help="short and long sequence lengths")
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="ours with compiled encoders (sgru-stereo infer --compile); the compilation falls in "
                             "the first frame, which the per-frame time leaves out")
    parser.add_argument("--rounds", type=positive, default=1, help="repeat every run, keep the fastest of each")
    parser.add_argument("--interleaved", type=positive, metavar="ROUNDS",
                        help="instead of whole processes (--frames, --rounds): both networks in one process of "
                             "--authors-python, alternating, ROUNDS passes each")
    args = parser.parse_args()
    if args.frames[0] >= args.frames[1]:
        parser.error("--frames: the second count must be larger than the first")
    # The authors' driver changes into their folder: every path it is given must be absolute.
    args.authors, args.checkpoint = (str(Path(path).resolve()) for path in (args.authors, args.checkpoint))
    if args.torchvision_stub:
        args.torchvision_stub = str(Path(args.torchvision_stub).resolve())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        (interleaved if args.interleaved else whole_processes)(args, env, Path(tmp))


if __name__ == "__main__":
    main()
