"""The detection trainer: detectron2's DefaultTrainer with bio_detectron's pieces plugged in."""

import logging

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import CheckedDatasetMapper, ensure_dataset_files
from ..evaluation import build_evaluator, check_evaluator
from ..solver import build_bio_optimizer, schedule_weight_decay
from .base import BioTrainerBase
from .ddp import sync_batchnorm_if_distributed

__all__ = ["BioTrainer"]


class BioTrainer(BioTrainerBase):
    """
    detectron2's DefaultTrainer (its hooks, builders and ``test``), with:

    * DistributedDataParallel that works for CPU processes (gloo) as well as CUDA ones;
    * BatchNorm turned into SyncBatchNorm when training with several CUDA processes
      (``MODEL.BIO.SYNC_BN``);
    * a stop with a clear message, before the optimizer step, when a loss becomes non-finite;
    * data loaders whose errors name an unreadable image, and the evaluator of each dataset's
      ``evaluator_type`` (:mod:`bio_detectron.evaluation`), the embedded datasets
      generated on demand;
    * the alignment-metrics hook when ``MODEL.BIO.ALIGNMENT.PERIOD`` > 0;
    * the optimizer of ``SOLVER.BIO`` (SGD or batch-manhattan SGD) and the weight mirror of the
      ``weight_mirror`` rule (``MODEL.BIO.MIRROR``);
    * ``SOLVER.AMP.ENABLED`` on CPU too: bfloat16 autocast where the CPU has native bfloat16,
      else full precision with a warning (:mod:`bio_detectron.engine.amp`).
    """

    def __init__(self, cfg):
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        # The decay for the schedule as configured: auto_scale_workers then changes lr and
        # MAX_ITER inversely, which keeps lr x decay x iterations.
        cfg = schedule_weight_decay(cfg)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        if type(self).build_evaluator.__func__ is BioTrainer.build_evaluator.__func__:
            for name in cfg.DATASETS.TEST:  # fail now, not after training
                check_evaluator(name)
        super().__init__(cfg, model, optimizer, data_loader)

    @staticmethod
    def auto_scale_workers(cfg, num_workers: int):
        """
        ``DefaultTrainer.auto_scale_workers`` (``SOLVER.REFERENCE_WORLD_SIZE``: batch and lr
        times ``num_workers / REFERENCE_WORLD_SIZE``, iterations divided by it), and
        ``SOLVER.BIO.LAST_LAYER_LR`` scaled like ``BASE_LR``: the last layer's lr is absolute,
        not relative to ``BASE_LR``, so without it a batch-manhattan config's last layer would keep
        the reference batch's lr at another batch size.
        """
        scaled = DefaultTrainer.auto_scale_workers(cfg, num_workers)
        last_lr = cfg.SOLVER.BIO.LAST_LAYER_LR
        if scaled is cfg or not last_lr:
            return scaled
        factor = num_workers / cfg.SOLVER.REFERENCE_WORLD_SIZE
        frozen = scaled.is_frozen()
        scaled.defrost()
        scaled.SOLVER.BIO.LAST_LAYER_LR = last_lr * factor
        if frozen:
            scaled.freeze()
        logging.getLogger(__name__).info(
            f"SOLVER.BIO.LAST_LAYER_LR scaled with SOLVER.BASE_LR for {num_workers} workers: "
            f"{last_lr:g} -> {scaled.SOLVER.BIO.LAST_LAYER_LR:g}"
        )
        return scaled

    def build_default_hooks(self):
        """DefaultTrainer's hooks (its EvalHook keeps the results in ``_last_eval_results``)."""
        return DefaultTrainer.build_hooks(self)

    def train(self):
        """
        Returns:
            OrderedDict or None: the results of the last evaluation (``TEST.EVAL_PERIOD``, and
            the final one), as ``DefaultTrainer.test`` returns them.
        """
        results = super().train()
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():  # as DefaultTrainer
            assert results is not None, "No evaluation results obtained during training!"
            verify_results(self.cfg, results)
        return results

    @classmethod
    def build_model(cls, cfg):
        return sync_batchnorm_if_distributed(super().build_model(cfg), cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_bio_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        ensure_dataset_files(dataset_name)
        mapper = CheckedDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)  # by evaluator_type

    @classmethod
    def evaluate(cls, cfg, resume: bool = False):
        """
        ``--eval-only``: build the model, load ``MODEL.WEIGHTS`` (or, with ``resume``, the last
        checkpoint of ``OUTPUT_DIR``) and evaluate it on ``DATASETS.TEST`` (:meth:`test`).

        Returns:
            OrderedDict: dataset name -> the evaluator's results.
        """
        return cls.test(cfg, cls.load_weights(cfg, cls.build_model(cfg), resume=resume))
