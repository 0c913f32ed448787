"""``BioPlausible``: any registered meta-architecture, trained with the configured rules."""
from detectron2.modeling import META_ARCH_REGISTRY

from .parts import check_exclude, convert_from_cfg

__all__ = ["BioPlausible"]


@META_ARCH_REGISTRY.register()
def BioPlausible(cfg):
    """
    Build ``MODEL.BIO.BASE_META_ARCHITECTURE`` (e.g. "GeneralizedRCNN") as detectron2 would and
    convert its Conv2d/Linear layers by ``MODEL.BIO``. The returned model is the inner model itself,
    so its state-dict keys are exactly those of the stock model (plus the ``feedback`` buffers of
    fixed rules) and stock checkpoints load unchanged.

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
    model = META_ARCH_REGISTRY.get(name)(cfg)
    convert_from_cfg(model, cfg)
    check_exclude(model, cfg)
    return model
