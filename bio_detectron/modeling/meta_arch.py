"""``BioPlausible`` (yacs) and ``bio_plausible`` (LazyConfig): any detectron2 model, trained with
the configured rules. Both read their arguments with :func:`~.parts.bio_args` and convert the
whole built model with :func:`~.parts.convert_parts`."""

from typing import Mapping, Optional, Sequence

from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from .parts import bio_args, convert_from_cfg, convert_parts

__all__ = ["BioPlausible", "bio_plausible"]


@META_ARCH_REGISTRY.register()
def BioPlausible(cfg):
    """
    Build ``MODEL.BIO.BASE_META_ARCHITECTURE`` (e.g. "GeneralizedRCNN") as detectron2 would and
    convert its layers by ``MODEL.BIO``. The returned model is the inner model itself, so its
    state-dict keys are exactly those of the stock model (plus the ``feedback`` state of rules
    that keep one) and stock checkpoints load unchanged.

    An existing detectron2 project plugs in with ``add_bio_config(cfg)`` and the config keys
    ``MODEL.META_ARCHITECTURE: BioPlausible``, ``MODEL.BIO.BASE_META_ARCHITECTURE`` and
    ``MODEL.BIO.RULE``.
    """
    name = cfg.MODEL.BIO.BASE_META_ARCHITECTURE
    if name == "BioPlausible" or name not in META_ARCH_REGISTRY:
        known = sorted(k for k, _ in META_ARCH_REGISTRY if k != "BioPlausible")
        raise ValueError(
            f"MODEL.BIO.BASE_META_ARCHITECTURE={name!r} is not a meta-architecture to wrap; "
            f"registered: {known}"
        )
    return convert_from_cfg(META_ARCH_REGISTRY.get(name)(cfg), cfg)


# Builds the whole model and converts it: the bio backbone builders may be used under it.
BioPlausible.converts_whole_model = True


def bio_plausible(
    model: nn.Module,
    rule: str,
    *,
    parts: Optional[Mapping[str, str]] = None,
    scale="kaiming",
    seed: int = 0,
    exclude: Sequence[str] = (),
    unsupported: str = "error",
) -> nn.Module:
    """
    Convert a built detectron2 model (or any model) by parts, with the same semantics and checks
    as ``MODEL.BIO``, and return it. Made for LazyConfig:

        model = L(bio_detectron.bio_plausible)(
            model=<a lazy model config>, rule="sign_symmetry", parts={"head": "backprop"},
            scale="mean_abs",
        )

    ``instantiate`` builds the inner model first, then this converts it.

    Args:
        model: the model (an instantiated one: LazyConfig instantiates nested configs first).
        rule: the rule of every part not in ``parts`` (``MODEL.BIO.RULE``).
        parts: part -> rule, parts "backbone", "fpn", "head", "predictor"
            (``MODEL.BIO.PARTS.*``); a missing part or "" inherits ``rule``.
        scale, seed, exclude, unsupported: ``MODEL.BIO.SCALE/SEED/EXCLUDE/UNSUPPORTED``.

    Returns:
        nn.Module: ``model``, converted in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"bio_plausible(model=...) needs a built model, got a {type(model).__name__}; in a "
            "LazyConfig, pass the lazy model config itself: instantiate builds it first"
        )
    args = bio_args(rule, parts, scale=scale, seed=seed, exclude=exclude, unsupported=unsupported)
    return convert_parts(model, **args)
