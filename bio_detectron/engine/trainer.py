"""The detection trainer: detectron2's DefaultTrainer with bio_detectron's pieces plugged in."""

import logging
import weakref

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import CheckedDatasetMapper, ensure_dataset_files
from ..evaluation import build_evaluator, check_evaluator
from ..solver import build_bio_optimizer
from .amp import precision_trainer_class
from .ddp import create_ddp_model, sync_batchnorm_if_distributed
from .hooks import add_bio_hooks_from_cfg

__all__ = ["BioTrainer"]

logger = logging.getLogger(__name__)


class BioTrainer(DefaultTrainer):
    """
    detectron2's DefaultTrainer, with:

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

    # DefaultTrainer.build_hooks writes metrics every 20 iterations (a literal there, with no
    # public way to read it back); tests/test_detection.py fails if that changes.
    WRITER_PERIOD = 20

    def __init__(self, cfg):
        # What DefaultTrainer.__init__ does, in its order, but with this package's DDP wrapper
        # (detectron2's passes device_ids, which CPU modules refuse) and step class (detectron2's
        # picks AMPTrainer whenever SOLVER.AMP.ENABLED, which needs CUDA). DefaultTrainer offers no
        # seam to choose either, so this is the one place that sets its private ``_trainer``, which
        # its run_step, state_dict and model/optimizer/data_loader properties read.
        # tests/test_detection.py fails if DefaultTrainer.__init__ sets attributes this does not.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        step = precision_trainer_class(
            SimpleTrainer, cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE, "SOLVER.AMP.ENABLED"
        )
        self._trainer = step(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        if type(self).build_evaluator.__func__ is BioTrainer.build_evaluator.__func__:
            for name in cfg.DATASETS.TEST:  # fail now, not after training
                check_evaluator(name)
        self.register_hooks(self.build_hooks())

    def train(self):
        """
        Returns:
            OrderedDict or None: the results of the last evaluation (``TEST.EVAL_PERIOD``, and
            the final one), as ``DefaultTrainer.test`` returns them.
        """
        super().train()
        return getattr(self, "_last_eval_results", None)

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
        model = cls.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=resume
        )
        return cls.test(cfg, model)

    def build_hooks(self):
        return add_bio_hooks_from_cfg(
            super().build_hooks(), self.model, self.cfg, writer_period=self.WRITER_PERIOD
        )
