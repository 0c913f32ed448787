"""
Leaving bio_detectron: a model trained with learning rules as a stock detectron2 model.

A rule changes only how a model learns, never what it computes, so a trained model *is* a stock
model: :func:`stock_config` maps a bio config to the stock detectron2 config of the same model,
and :func:`export_stock_model` writes that config and the trained weights (rules reverted, their
``feedback`` state dropped) where plain detectron2 loads them, without bio_detectron::

    cfg = detectron2.config.get_cfg()
    cfg.merge_from_file("exported/config.yaml")
    predictor = detectron2.engine.DefaultPredictor(cfg)
"""

import collections
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from .config import add_bio_config
from .core.convert import revert_model, rules_of
from .modeling.retinanet import RETINANET_HEAD_REGISTRY

__all__ = [
    "stock_config",
    "load_weights",
    "build_stock_model",
    "export_stock_model",
]


def bio_keys() -> List[str]:
    """The keys :func:`~bio_detectron.config.add_bio_config` adds to detectron2's config (each
    node once: "MODEL.BIO", not what is under it), read off the two configs so none is missed."""
    bio = get_cfg()
    add_bio_config(bio)
    return _keys_not_in(bio, get_cfg())


def _stock_name(registry, name: str, key: str) -> str:
    """
    The detectron2 builder of the model that ``registry``'s ``name`` builds: ``name`` itself for
    a detectron2 builder, else the ``stock_name`` that a thin builder of bio_detectron (one that
    builds the stock module, which the meta-architecture converts) carries.
    """
    if name not in registry:
        raise ValueError(f"{key}={name!r} is not registered with detectron2")
    stock = getattr(registry.get(name), "stock_name", name)
    if stock not in registry or registry.get(stock).__module__.startswith("bio_detectron"):
        raise ValueError(
            f"{key}={name!r} is built by bio_detectron and has no stock detectron2 counterpart "
            "(a builder that builds a stock module names it in its stock_name)"
        )
    return stock


def _keys_not_in(cfg: CfgNode, reference: CfgNode, prefix: str = "") -> List[str]:
    missing = []
    for k, v in cfg.items():
        if k not in reference:
            missing.append(prefix + k)
        elif isinstance(v, CfgNode) and isinstance(reference[k], CfgNode):
            missing += _keys_not_in(v, reference[k], f"{prefix}{k}.")
    return missing


def stock_config(cfg: CfgNode) -> CfgNode:
    """
    The stock detectron2 config of the model ``cfg`` builds.

    Args:
        cfg: a config with :func:`~bio_detectron.config.add_bio_config`'s keys, e.g. one of
            configs/Shapes-Detection, or a detectron2 config with ``BioPlausible``.

    Returns:
        CfgNode: a copy of ``cfg`` with detectron2's builder names (``MODEL.META_ARCHITECTURE``
        "BioPlausible" -> ``MODEL.BIO.BASE_META_ARCHITECTURE``; a thin builder registered by
        bio_detectron -> its ``stock_name``, e.g. "BioRetinaNet" -> "RetinaNet") and without the
        keys of :func:`bio_keys`. Keys of other extensions (not in detectron2's ``get_cfg()``)
        are kept, with a warning naming them: merging it then needs their ``add_*_config`` too.
    """
    if "CLASSIFIER" in cfg.MODEL:
        raise ValueError(
            "a classifier config (MODEL.CLASSIFIER.NAME="
            f"{cfg.MODEL.CLASSIFIER.NAME!r}) has no stock detectron2 meta-architecture; save "
            "bio_detectron.revert_model(model).state_dict() instead"
        )
    if "BIO" not in cfg.MODEL:
        raise ValueError("cfg has no MODEL.BIO keys: it is not a bio_detectron config")
    meta = cfg.MODEL.META_ARCHITECTURE
    if meta == "BioPlausible":
        meta = cfg.MODEL.BIO.BASE_META_ARCHITECTURE
    if meta == "BioRetinaNet":
        head = cfg.MODEL.RETINANET.HEAD_NAME
        builder = RETINANET_HEAD_REGISTRY.get(head) if head in RETINANET_HEAD_REGISTRY else None
        # Stock RetinaNet builds RetinaNetHead: the head builder must build that for the model to
        # be stock RetinaNet's.
        if getattr(builder, "stock_name", None) != RetinaNetHead.__name__:
            raise ValueError(
                f"MODEL.RETINANET.HEAD_NAME={head!r} has no stock detectron2 counterpart; stock "
                f"RetinaNet builds {RetinaNetHead.__name__}"
            )
    meta = _stock_name(META_ARCH_REGISTRY, meta, "MODEL.META_ARCHITECTURE")
    backbone = _stock_name(BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.NAME, "MODEL.BACKBONE.NAME")

    stock = cfg.clone()
    stock.defrost()
    for key in bio_keys():
        parent, _, leaf = key.rpartition(".")
        node = stock
        for k in parent.split("."):
            node = node[k]
        node.pop(leaf, None)
    stock.MODEL.META_ARCHITECTURE = meta
    stock.MODEL.BACKBONE.NAME = backbone
    extra = _keys_not_in(stock, get_cfg())
    if extra:
        warnings.warn(
            f"the stock config keeps keys that detectron2's get_cfg() does not have: {extra}; "
            "merging it needs the add_*_config of the project that defines them",
            stacklevel=2,
        )
    return stock


def _build_on_cpu(cfg: CfgNode) -> nn.Module:
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """
    Load a checkpoint written by ``tools/train_net.py`` (a dict with "model") or a bare state
    dict into ``model``, strictly: a missing or unexpected key is an error naming it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights {path!r}: no such file")
    # weights_only: tensors and plain containers only, nothing else is unpickled.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {path!r} hold neither a state dict nor a dict with 'model'")
    result = model.load_state_dict(state, strict=False)
    mismatched = result.missing_keys + result.unexpected_keys
    # (A converted layer takes a checkpoint without its feedback as a stock one: never missing.)
    if mismatched and all(k.endswith(".feedback") for k in mismatched):
        raise ValueError(
            f"weights {path!r} hold the feedback tensors of {len(mismatched)} layers whose rule "
            f"in the config keeps none (e.g. {mismatched[:3]}): they were trained with other "
            "learning rules; give the config and MODEL.BIO options they were trained with"
        )
    if mismatched:
        raise ValueError(
            f"weights {path!r} do not fit the model the config builds "
            f"({type(model).__name__}): missing keys {result.missing_keys[:10]} "
            f"({len(result.missing_keys)} in all), unexpected keys "
            f"{result.unexpected_keys[:10]} ({len(result.unexpected_keys)} in all)"
        )
    return model


def build_stock_model(cfg: CfgNode, weights: str) -> Tuple[CfgNode, nn.Module, Dict[str, int]]:
    """
    Build ``cfg``'s model on the CPU, load ``weights`` into it strictly, revert its rules, and
    load the result strictly into the stock model of :func:`stock_config`.

    Returns:
        (CfgNode, nn.Module, dict): the stock config, the stock model (CPU) holding the trained
        weights, and how many layers learnt with each rule (``rules_of`` counted).
    """
    stock_cfg = stock_config(cfg)
    model = load_weights(_build_on_cpu(cfg), weights)
    rules = dict(collections.Counter(rules_of(model).values()))
    state = revert_model(model).state_dict()
    stock = _build_on_cpu(stock_cfg)
    stock.load_state_dict(state, strict=True)
    return stock_cfg, stock, rules


def export_stock_model(
    cfg: CfgNode, weights: str, output_dir: str, *, source: Optional[str] = None
) -> Dict[str, str]:
    """
    Write ``output_dir/model_final.pth`` (``{"model": state dict}`` of the stock model) and
    ``output_dir/config.yaml`` (the stock config, ``MODEL.WEIGHTS`` set to that file's absolute
    path), which plain detectron2 loads without bio_detectron.

    Args:
        cfg, weights: see :func:`build_stock_model`.
        output_dir: created if missing; existing files of those names are replaced.
        source: where ``cfg`` came from (a config file), for the header comment of config.yaml.

    Returns:
        dict: "config" and "weights", the paths written.
    """
    stock_cfg, stock, rules = build_stock_model(cfg, weights)
    os.makedirs(output_dir, exist_ok=True)
    weights_path = os.path.abspath(os.path.join(output_dir, "model_final.pth"))
    torch.save({"model": stock.state_dict()}, weights_path)
    stock_cfg.MODEL.WEIGHTS = weights_path
    learnt = ", ".join(f"{rule}: {n} layers" for rule, n in sorted(rules.items()))
    header = (
        f"# A stock detectron2 config, exported by bio_detectron from {source or 'a config'}\n"
        f"# with the weights {os.path.abspath(weights)} (learnt with {learnt}).\n"
        "# Load it with detectron2.config.get_cfg() and merge_from_file; no bio_detectron needed.\n"
    )
    config_path = os.path.join(output_dir, "config.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(header + stock_cfg.dump())
    return {"config": config_path, "weights": weights_path}
