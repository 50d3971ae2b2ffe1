"""The network's per-frame encoders under torch.compile (the torch engine's ``compile`` option). No ROS here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from .model.base import SelectiveStereo

#: torch.compile's settings for ``compile_encoders``: one graph per input size (a camera keeps its size;
#: dynamic shapes cost speed). Not inductor's ``freezing`` (weights as constants): no faster per frame
#: here, and its graphs miss inductor's disk cache, so every process compiled again (docs/performance.md,
#: "Compiled encoders").
_COMPILE_OPTIONS = {"dynamic": False}
T = TypeVar("T")


def compile_encoders(model: SelectiveStereo, device: torch.device) -> None:
    """Hand the model's per-frame encoders (``SelectiveStereo.encoder_names``) to torch.compile, in place.

    Only each encoder's ``forward`` is compiled: the module hooks (the estimator's cancel check) stay
    outside the graph, the state dict keeps its keys and the weights are read at run time (a deep
    copy of the model still calls the original's compiled encoders: copy before compiling). The
    first pass at each input size compiles (up to a minute on 2 cores; a few seconds once inductor's
    disk cache holds it, also for later processes); dynamo keeps a few sizes per encoder (its
    recompile limit) and runs further ones eagerly. On the CPU inductor builds C++, so a C++ compiler
    must be installed: ValueError when there is none.
    """
    if device.type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as err:  # noqa: BLE001 -- inductor's own error types differ between releases
            raise ValueError("compile needs a C++ compiler for PyTorch's inductor on the CPU "
                             f"(install g++ or set CXX): {str(err).splitlines()[0] if str(err) else err!r}") from err
    for name in model.encoder_names:
        encoder = getattr(model, name)
        encoder.forward = torch.compile(encoder.forward, **_COMPILE_OPTIONS)


def uncompile_encoders(model: SelectiveStereo) -> None:
    """Undo ``compile_encoders``: each encoder's class ``forward`` runs again (eager)."""
    for name in model.encoder_names:
        vars(getattr(model, name)).pop("forward", None)


class CompiledEncoders:
    """A model whose encoders are compiled (``compile_encoders``), and the network input sizes they have seen.

    ``run(pass_, size)`` runs ``pass_()``; at a size not seen before it is announced through ``log`` first,
    as it compiles. A failed compilation would fail every later frame the same way, so the encoders run
    eagerly from then on (``active`` turns False).
    """

    def __init__(self, model: SelectiveStereo, device: torch.device,
                 log: Callable[[str], None] | None = None) -> None:
        compile_encoders(model, device)
        self.model = model
        self.active = True
        self._log = log or (lambda line: None)
        self._sizes: set[tuple[int, int]] = set()

    def run(self, pass_: Callable[[], T], size: tuple[int, int]) -> T:
        if not self.active or size in self._sizes:
            return pass_()
        self._log(f"compiling the encoders for the network input of {size[1]}x{size[0]} (the first frame "
                  "of each size; seconds to a minute)")
        try:
            result = pass_()
        except torch._dynamo.exc.TorchDynamoException as err:  # imported by torch.compile
            uncompile_encoders(self.model)
            self.active = False
            cause = getattr(err, "inner_exception", None) or err  # BackendCompilerFailed wraps it
            self._log("compiling the encoders failed, running them eagerly from now on: "
                      f"{type(cause).__name__}: {(str(cause).strip() or '?').splitlines()[0]}")
            return pass_()
        self._sizes.add(size)
        return result
