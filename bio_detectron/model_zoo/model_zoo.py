"""Finding and loading the configs shipped with bio_detectron (the repository's ``configs/``)."""

import os

__all__ = ["configs_root", "get_config_file", "get_config"]

# A wheel (``pip install .``) carries a copy of the repository's configs/ here: setup.py copies
# it at build time, as detectron2 does with its model zoo configs.
_PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# A source checkout or an editable install (``pip install -e .``, ``make install``) has no copy:
# the package is the repository's bio_detectron/, next to configs/.
_REPOSITORY_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)
# A file every configs/ of this project has: tells our configs/ from someone else's folder of that
# name next to the package (site-packages/configs exists in some environments).
_MARKER = "Base-BioRetinaNet.yaml"


def configs_root() -> str:
    """
    Returns:
        str: the folder holding bio_detectron's configs: the copy inside the installed package, or
        the repository's ``configs/`` for a source checkout or an editable install.
    """
    for root in (_PACKAGED_CONFIGS, _REPOSITORY_CONFIGS):
        if os.path.isfile(os.path.join(root, _MARKER)):
            return root
    raise FileNotFoundError(
        f"bio_detectron's configs are neither in the installed package ({_PACKAGED_CONFIGS}) nor "
        f"in a source checkout next to it ({_REPOSITORY_CONFIGS}); reinstall with `pip install .` "
        "from the repository, whose setup.py copies configs/ into the package"
    )


def get_config_file(config_path: str) -> str:
    """
    Args:
        config_path (str): a config's path relative to the repository's ``configs/``, e.g.
            "Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.yaml".

    Returns:
        str: the config file's absolute path. Relative ``_BASE_`` paths in it resolve, as the
        folder structure is the repository's.
    """
    root = configs_root()
    path = os.path.normpath(os.path.join(root, config_path))
    if os.path.isabs(config_path) or not path.startswith(root + os.sep):
        raise ValueError(
            f"config_path={config_path!r} must be relative to bio_detectron's configs folder, "
            "e.g. 'Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.yaml'"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{config_path!r} is not one of bio_detectron's configs (in {root})"
        )
    return path


def get_config(config_path: str):
    """
    Args:
        config_path (str): see :func:`get_config_file`.

    Returns:
        CfgNode or omegaconf.DictConfig: for a ``.yaml`` file, detectron2's default config with
        :func:`~bio_detectron.config.add_bio_config` (and, for classifier configs, those with
        ``MODEL.CLASSIFIER``, :func:`~bio_detectron.config.add_classification_config`), merged
        with the file and its ``_BASE_`` files; for a ``.py`` file, ``LazyConfig.load`` of it.
    """
    path = get_config_file(config_path)
    # detectron2 is imported here, not above: get_config_file and configs_root need only the
    # files, and the package imports without detectron2.
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        return LazyConfig.load(path)
    if not path.endswith((".yaml", ".yml")):
        raise ValueError(f"{config_path!r} is neither a .yaml nor a .py config")
    from detectron2.config import CfgNode, get_cfg

    from ..config import add_bio_config, add_classification_config

    cfg = get_cfg()
    add_bio_config(cfg)
    if "CLASSIFIER" in (CfgNode.load_yaml_with_base(path, allow_unsafe=False).get("MODEL") or {}):
        add_classification_config(cfg)
    cfg.merge_from_file(path)
    return cfg
