"""
The configs of bio_detectron, wherever the package is installed, in the style of
``detectron2.model_zoo``::

    from bio_detectron import model_zoo
    cfg = model_zoo.get_config("Shapes-Detection/retinanet_R_18_FPN_sign_symmetry.yaml")
    path = model_zoo.get_config_file(
        "quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml"
    )
"""

from .model_zoo import configs_root, get_config, get_config_file

__all__ = ["configs_root", "get_config", "get_config_file"]
