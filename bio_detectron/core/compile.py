"""
``torch.compile`` for converted models: every rule compiles into whole graphs.

A converted layer's rule runs through one ``torch.autograd.Function`` per layer, which dynamo
traces into the graph with its backward; the feedback tensor is made when the weights are set,
never in a forward pass. So a plain ``torch.compile(model)`` gives no graph break, and
:func:`compile_model` is not needed for that. What only it adds:

* **which modules**: for detectors, the parts with static shapes (the backbone with its FPN, the
  RetinaNet/FCOS head, the RPN head), while losses, anchor matching and post-processing stay
  eager (compiled whole, a detector's data-dependent parts recompile and break graphs); for any
  other model, the whole model, or the parts it names in ``bio_compile_targets``;
* **the CPU Inductor options** of :func:`inductor_defaults`, and a check that the platform can
  compile (:func:`check_compile`) before the first step rather than deep inside it;
* **a check that the compiled modules ran** (:func:`uncalled_compiled`).

A module is compiled in place: its ``forward`` becomes ``torch.compile(forward)``. State-dict keys
stay the stock ones (no ``_orig_mod.`` prefix), checkpoints load into compiled and eager models
alike, a DistributedDataParallel wrapper made before keeps working (compile after wrapping), and
the hooks of the compiled module itself (a trainer's loss check, the alignment probe's capture)
run outside the graph. Hooks on modules inside it are traced: register them before the first
compiled call and keep them, or each change recompiles.
"""

import importlib.util
import logging
import os
import shutil
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .layers import is_converted

__all__ = [
    "COMPILE_MODES",
    "check_compile",
    "compile_model",
    "compile_targets",
    "inductor_defaults",
    "uncalled_compiled",
]

logger = logging.getLogger(__name__)

# torch.compile's modes ("reduce-overhead" uses CUDA graphs on CUDA).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Parts of a detectron2 meta-architecture with static shapes, by attribute path, in this order.
DETECTOR_PARTS = ("backbone", "head", "proposal_generator.rpn_head")


def _module_at(model: nn.Module, path: str) -> Optional[nn.Module]:
    module = model
    for attr in [a for a in path.split(".") if a]:
        module = getattr(module, attr, None)
    return module if isinstance(module, nn.Module) else None


def compile_targets(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """
    Returns:
        list[(str, nn.Module)]: what :func:`compile_model` compiles by default: the paths a model
        names in its ``bio_compile_targets`` attribute (this package's classifiers do; a model of
        your own can); else, for a model with a ``backbone`` (detectron2's meta-architectures),
        the parts of :data:`DETECTOR_PARTS` it has; else the model itself (name "").
    """
    named = getattr(model, "bio_compile_targets", None)
    if named is not None:
        found = [(path, _module_at(model, path)) for path in named]
        missing = [path for path, module in found if module is None]
        if missing:
            raise ValueError(
                f"{type(model).__name__}.bio_compile_targets names {missing}, which are "
                "not modules of the model"
            )
        return found
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        return [("", model)]
    found = [(path, _module_at(model, path)) for path in DETECTOR_PARTS]
    return [(path, module) for path, module in found if module is not None]


def _count_call(module, args):
    module._bio_compiled_calls += 1


def uncalled_compiled(model: nn.Module) -> List[str]:
    """
    Returns:
        list[str]: the modules of ``model`` that :func:`compile_model` compiled and that no call
        has reached since, by path: the model's forward went around them (e.g. calling a child
        of theirs directly), so that they ran eagerly.
    """
    return [
        name or type(model).__name__
        for name, m in model.named_modules()
        if getattr(m, "_bio_compiled", False) and m._bio_compiled_calls == 0
    ]


def _cpp_compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def check_compile(device, backend: str = "inductor") -> None:
    """
    Raise a RuntimeError when this platform cannot compile for ``device`` with
    ``backend``: Inductor needs a C++ compiler for the CPU and Triton for CUDA. (Without the check
    the first training step would fail deep inside Inductor.)
    """
    if backend != "inductor":
        return
    device = torch.device(device)
    if device.type == "cpu" and _cpp_compiler() is None:
        raise RuntimeError(
            "torch.compile (Inductor) needs a C++ compiler to compile for the CPU, and "
            "none was found (CXX, g++, clang++, c++ on PATH). Install one, or turn compiling off."
        )
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise RuntimeError(
            "torch.compile (Inductor) needs Triton to compile for CUDA, which is not "
            "installed. Install it (pip install triton), or turn compiling off."
        )


def inductor_defaults(device, backend: str = "inductor", mode: str = "default") -> Optional[dict]:
    """
    The Inductor options :func:`compile_model` compiles with, or None for torch.compile's own.

    On the CPU: ``mode``'s options with ``layout_optimization`` off. Inductor's layout
    optimisation turns convolutions channels-last, copying every weight and feedback tensor to
    that layout at each step; on the 2-core CPU of docs/benchmarks.md it made the compiled stock
    ResNet-18 step 1.08x (batch 16 x 128 px) to 1.47x (4 x 64 px) slower than without, and every
    rule slower still (B is copied too). Elsewhere (CUDA, where channels-last convolutions use
    tensor cores): None. A caller's ``options`` still override these.
    """
    if backend != "inductor" or torch.device(device).type != "cpu":
        return None
    from torch._inductor import list_mode_options

    return {**list_mode_options(mode), "layout_optimization": False}


def _warn_eager_layers(targets) -> None:
    """Warn, by name, about the converted layers inside ``targets`` that run eagerly between
    compiled graphs: those whose rule sends the output error to the layer (direct feedback
    alignment reads it through Python state, where Dynamo breaks the graph)."""
    eager = [
        f"{path + '.' if path else ''}{name}"
        for path, target in targets
        for name, m in target.named_modules()
        if is_converted(m) and getattr(m.learning_rule, "error_feedback", False)
    ]
    if eager:
        shown = ", ".join(eager[:5]) + (f" and {len(eager) - 5} more" if len(eager) > 5 else "")
        warnings.warn(
            f"{len(eager)} converted layer(s) learn with an output-error rule (direct feedback "
            f"alignment) and run eagerly between compiled graphs (a graph break at each): "
            f"{shown}. Their gradients are the same as eager; only the other layers are compiled "
            '(docs/rules.md, "Direct feedback alignment").',
            stacklevel=3,
        )


def compile_model(
    model: nn.Module,
    modules: Optional[Sequence[str]] = None,
    *,
    mode: str = "default",
    backend: str = "inductor",
    device=None,
    **options,
) -> Dict[str, nn.Module]:
    """
    ``torch.compile`` the modules of ``model`` in place: a detector's static-shape parts (or those
    ``modules`` names), with the CPU Inductor options of :func:`inductor_defaults`, after checking
    that the platform can compile. ``torch.compile(model)`` works on a converted model too; this
    adds only that choice of modules, those options and the checks (see the module doc).

    Args:
        model: a model (unwrapped from DistributedDataParallel).
        modules: attribute paths of the modules to compile, "" for the model itself; default
            :func:`compile_targets`.
        mode, backend, options: ``torch.compile``'s.
        device: where the model trains (for :func:`check_compile`); default its parameters'.

    Returns:
        dict[str, nn.Module]: the compiled modules by path.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode {mode!r} is not one of torch.compile's {COMPILE_MODES}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    check_compile(device, backend)
    if modules is None:
        targets = compile_targets(model)
    else:
        targets = [(path, _module_at(model, path)) for path in modules]
        for path, module in targets:
            if module is None:
                raise ValueError(f"{type(model).__name__} has no module {path!r}")
    for path, module in targets:
        if getattr(module, "_bio_compiled", False):
            raise ValueError(f"{path or type(model).__name__} is compiled already")
    kwargs = dict(options, backend=backend)
    inductor_options = inductor_defaults(device, backend, mode)
    if inductor_options is not None:
        kwargs["options"] = {**inductor_options, **(options.get("options") or {})}
    elif mode != "default":
        kwargs["mode"] = mode
    for _, module in targets:
        module.forward = torch.compile(module.forward, **kwargs)
        module._bio_compiled, module._bio_compiled_calls = True, 0
        # Outside the graph (a hook of the compiled module itself): see uncalled_compiled().
        module.register_forward_pre_hook(_count_call)
    converted = sum(is_converted(m) for _, t in targets for m in t.modules())
    _warn_eager_layers(targets)
    settings = f"backend {backend}, mode {mode}"
    if "options" in kwargs:
        settings += f", Inductor options {kwargs['options']}"
    logger.info(
        f"Compiled {', '.join(p or type(model).__name__ for p, _ in targets)} with torch.compile "
        f"({settings}); {converted} converted layers inside"
    )
    return dict(targets)
