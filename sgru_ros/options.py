"""What the network's run-time options mean, written once. The command line's model options and the
stereo node's parameters of the same name take their help text from here. No ROS here."""

from __future__ import annotations

OPTION_HELP = {
    "model": "checkpoint file (the authors' .pth or this package's), or a bundled model: compact (the default) or "
             "fast (narrower encoders, for init sgbm at 1-2 iterations)",
    "max_disp": "Selective-IGEV cost-volume range in processed pixels, a multiple of 32",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "fp32, fp16 (CUDA) or bf16",
    "engine": "torch, or onnxruntime: an ONNX export per image size and iteration count, built on first use "
              "(minutes) and cached; fixed iterations",
    "compile": "torch engine: compile the per-frame encoders with torch.compile (needs a C++ compiler on the CPU; "
               "the first frame of each image size compiles, seconds to a minute, and cannot be cancelled midway)",
    "graphs": "torch engine on CUDA: capture the pass of each image size and iteration count as a CUDA graph and "
              "replay it per frame (frames with a warm start, latency budget or convergence stop run eagerly)",
    "threads": "CPU threads of the network; fewer leave cores to DDS and the other nodes",
    "max_width": "downscale wider images to this width before the network (the disparity is scaled back)",
    "init": "where the GRU iterations start: none (the network's own estimate) or sgbm (OpenCV SGBM's map, holes "
            "filled, refined by the network; torch engine)",
    "sgbm_disparities": "SGBM's search range in px for init sgbm, a multiple of 16",
}
