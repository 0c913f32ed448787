"""
Pascal VOC detection AP with each class's AP50: detectron2's ``PascalVOCDetectionEvaluator``
(the same predictions, the same ``voc_eval``, the 2007 11-point or 2012 area AP at IoU 0.50 to
0.95) whose results also hold ``AP50-<class>``, averaged over the classes that the split has ground
truth for.
"""

import logging
import os
import tempfile
from collections import Counter, OrderedDict, defaultdict
from typing import Dict

import numpy as np
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import parse_rec, voc_eval
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

__all__ = ["PascalVOCEvaluator", "VOC_IOU_THRESHOLDS"]

logger = logging.getLogger(__name__)

# The IoU thresholds of "AP" (their mean), in percent: 50, 55, ..., 95, as detectron2's.
VOC_IOU_THRESHOLDS = tuple(range(50, 100, 5))


class PascalVOCEvaluator(PascalVOCDetectionEvaluator):
    """
    detectron2's Pascal VOC evaluator, constructed and fed the same way (a dataset with metadata
    ``dirname``, ``split``, ``year`` and ``thing_classes``, as ``register_pascal_voc`` sets), with
    two differences in :meth:`evaluate`:

    * the results hold each class's AP50 as ``"AP50-<class>"`` (VOC papers report the per-class
      table), and the table is logged;
    * "AP", "AP50" and "AP75" average over the classes with at least one object not marked
      difficult in the split, as COCO's AP does. detectron2 averages over every class, so that a
      class without objects counts as AP 0. On the real ``voc_2007_test`` every class has objects
      and the numbers are detectron2's; on a VOC-format set of a few of the 20 classes they are
      the mean over those classes (the others are named in the log).
    """

    def evaluate(self):
        """
        Returns:
            OrderedDict: {"bbox": {"AP", "AP50", "AP75", "AP50-<class>" for each class with ground
            truth}} on the main process (percent), None on the others.
        """
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        predictions = defaultdict(list)
        for per_rank in all_predictions:
            for cls_id, lines in per_rank.items():
                predictions[cls_id].extend(lines)

        objects = self._ground_truth_objects()
        absent = [name for name in self._class_names if not objects[name]]
        if absent:
            logger.info(
                f"{self._dataset_name}: no objects (not difficult) of {len(absent)} class(es) in "
                f"split {self._image_set_path}; AP averages over the other "
                f"{len(self._class_names) - len(absent)}. Without objects: {absent}"
            )
        year = 2007 if self._is_2007 else 2012
        logger.info(f"Evaluating {self._dataset_name} with the VOC {year} AP (voc_eval).")
        aps: Dict[str, Dict[int, float]] = {}
        with tempfile.TemporaryDirectory(prefix="pascal_voc_eval_") as folder:
            detections = os.path.join(folder, "{}.txt")
            for cls_id, name in enumerate(self._class_names):
                if not objects[name]:
                    continue
                with open(detections.format(name), "w") as f:
                    f.write("\n".join(predictions.get(cls_id, [])))
                aps[name] = {
                    t: 100.0
                    * voc_eval(
                        detections,
                        self._anno_file_template,
                        self._image_set_path,
                        name,
                        ovthresh=t / 100.0,
                        use_07_metric=self._is_2007,
                    )[2]
                    for t in VOC_IOU_THRESHOLDS
                }
        if not aps:
            raise ValueError(
                f"{self._dataset_name}: split {self._image_set_path} has no object (not difficult) "
                f"of any class of {self._class_names}: there is nothing to compute VOC AP of"
            )
        mean = {t: float(np.mean([ap[t] for ap in aps.values()])) for t in VOC_IOU_THRESHOLDS}
        bbox = {"AP": float(np.mean(list(mean.values()))), "AP50": mean[50], "AP75": mean[75]}
        bbox.update({f"AP50-{name}": float(ap[50]) for name, ap in aps.items()})
        logger.info(
            f"Per-class AP50 on {self._dataset_name}:\n"
            + create_small_table({name: ap[50] for name, ap in aps.items()})
        )
        return OrderedDict(bbox=bbox)

    def _ground_truth_objects(self) -> Counter:
        """Class name -> objects not marked difficult in the split (``voc_eval``'s count)."""
        with PathManager.open(self._image_set_path) as f:
            image_ids = [line.strip() for line in f if line.strip()]
        counts = Counter()
        for image_id in image_ids:
            for obj in parse_rec(self._anno_file_template.format(image_id)):
                counts[obj["name"]] += not obj["difficult"]
        return counts
