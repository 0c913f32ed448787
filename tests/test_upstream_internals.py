"""
Where bio_detectron copies a piece of detectron2 (or torch) or reads a private name, one test each
that fails when upstream changes it. docs/development.md lists them with the reason, in
"Where the code relies on detectron2's internals".
"""

import ast
import inspect
import os
import re
import textwrap

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, SimpleTrainer
from detectron2.engine.hooks import EvalHook, PeriodicWriter
from torch import nn

from bio_detectron.config import add_bio_config
from bio_detectron.engine import BioTrainer, ClassificationCheckpointer
from bio_detectron.engine.amp import CPUAutocastTrainer, cpu_has_native_bfloat16
from bio_detectron.visualize import KeepingCheckpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(
    REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml"
)


def instant_cfg(tmp_path, *opts):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(INSTANT)
    cfg.merge_from_list(
        ["SOLVER.MAX_ITER", 1, "OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", (), *opts]
    )
    return cfg


# --- engine/amp.py: the CPU bfloat16 step is a copy of SimpleTrainer.run_step ---------------------


class _NoStrings(ast.NodeTransformer):
    """Drops bare string statements (docstrings and the string "comments" detectron2 writes)."""

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return node


def _statements(function):
    """The statements of ``function``'s body, as source text normalised by ``ast.unparse``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    body = _NoStrings().visit(tree).body[0].body
    return body


def _without_autocast(statements):
    """The statements, the one ``with torch.autocast("cpu", ...)`` block replaced by its body."""
    out, unwrapped = [], 0
    for s in statements:
        if isinstance(s, ast.With) and ast.unparse(s.items[0].context_expr).startswith(
            "torch.autocast('cpu'"
        ):
            out += s.body
            unwrapped += 1
        else:
            out.append(s)
    assert unwrapped == 1, "CPUAutocastTrainer.run_step has no single autocast block"
    return out


def test_cpu_autocast_step_is_simple_trainers_step_inside_autocast():
    """CPUAutocastTrainer.run_step copies SimpleTrainer.run_step with its forward pass and loss
    in autocast: when detectron2 changes its step, the copy must follow."""
    ours = [ast.unparse(s) for s in _without_autocast(_statements(CPUAutocastTrainer.run_step))]
    ours = [s.replace("[CPUAutocastTrainer]", "[SimpleTrainer]") for s in ours]
    theirs = [ast.unparse(s) for s in _statements(SimpleTrainer.run_step)]
    assert ours == theirs


def test_cpu_autocast_step_comparison_notices_a_change():
    """The comparison above fails on a copy that differs (here: one statement dropped)."""
    ours = _without_autocast(_statements(CPUAutocastTrainer.run_step))
    theirs = _statements(SimpleTrainer.run_step)
    assert [ast.unparse(s) for s in ours[:-1]] != [ast.unparse(s) for s in theirs]


# --- engine/amp.py: torch.ops.mkldnn._is_mkldnn_bf16_supported ----------------------------------


def test_mkldnn_bf16_query_exists_and_agrees_with_the_cpu_flags():
    """The private oneDNN query returns a bool, and True on a CPU whose flags name native
    bfloat16 (AVX512-BF16 or AMX-BF16)."""
    supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert isinstance(supported, bool)
    assert cpu_has_native_bfloat16() == (torch.backends.mkldnn.is_available() and supported)
    if os.path.exists("/proc/cpuinfo"):
        flags = set(re.findall(r"\w+", open("/proc/cpuinfo").read()))
        if {"avx512_bf16", "amx_bf16"} & flags and torch.backends.mkldnn.is_available():
            assert supported


# --- engine/base.py: DefaultTrainer's _trainer, _last_eval_results, writer period 20 -------------


def test_bio_trainer_sets_what_default_trainer_sets(tmp_path):
    """BioTrainerBase.__init__ does DefaultTrainer.__init__'s work itself (to pick its own DDP
    wrapper and step trainer): it must set every attribute detectron2's sets, and hold the same
    pieces in the inner trainer that DefaultTrainer's run_step, state_dict and properties read."""
    cfg = instant_cfg(tmp_path, "MODEL.BIO.ALIGNMENT.PERIOD", 0, "SOLVER.AMP.ENABLED", False)
    stock, bio = DefaultTrainer(cfg), BioTrainer(cfg)
    assert set(vars(stock)) <= set(vars(bio))
    assert type(bio._trainer) is type(stock._trainer) is SimpleTrainer
    for trainer in (stock, bio):
        inner = trainer._trainer
        assert inner.model is trainer.model and inner.optimizer is trainer.optimizer
        assert inner.data_loader is trainer.data_loader
        assert "_trainer" in trainer.state_dict()  # the step's state, as checkpoints hold it

    class Step:  # what DefaultTrainer.run_step hands the iteration to
        def run_step(self):
            self.ran_at = self.iter

    stock._trainer = Step()
    stock.iter = 7
    stock.run_step()
    assert stock._trainer.ran_at == 7


def test_default_trainer_keeps_the_last_evaluation_in_last_eval_results(tmp_path, monkeypatch):
    """DefaultTrainer.build_hooks's EvalHook function stores its results in the private
    ``_last_eval_results``, which BioTrainerBase.train returns (BioTrainer uses those hooks)."""
    results = {"bbox": {"AP": 1.0}}
    monkeypatch.setattr(DefaultTrainer, "test", classmethod(lambda cls, cfg, model: results))
    trainer = DefaultTrainer(instant_cfg(tmp_path))
    (hook,) = [h for h in trainer._hooks if isinstance(h, EvalHook)]
    assert hook._func() is results and trainer._last_eval_results is results


def test_default_trainer_writes_every_20_iterations(tmp_path):
    """BioTrainerBase.WRITER_PERIOD is DefaultTrainer.build_hooks's literal writer period."""
    writers = [h for h in DefaultTrainer(instant_cfg(tmp_path))._hooks]
    writers = [h for h in writers if isinstance(h, PeriodicWriter)]
    assert [w._period for w in writers] == [BioTrainer.WRITER_PERIOD]


# --- engine/ddp.py: a copy of detectron2's create_ddp_model --------------------------------------

# detectron2.engine.defaults.create_ddp_model as engine/ddp.py copied it (docstring left out).
CREATE_DDP_MODEL = """
def create_ddp_model(model, *, fp16_compression=False, **kwargs):
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp
"""


def test_create_ddp_model_is_the_one_copied():
    """engine/ddp.py's create_ddp_model is detectron2's but for device_ids on CPU: when
    detectron2's changes, compare the two and update the copy (and CREATE_DDP_MODEL)."""
    from detectron2.engine import defaults

    theirs = [ast.unparse(s) for s in _statements(defaults.create_ddp_model)]
    copied = ast.parse(CREATE_DDP_MODEL).body[0].body
    assert theirs == [ast.unparse(s) for s in copied]


# --- engine/classification.py, visualize/detections.py: Checkpointer._load_model -----------------


@pytest.mark.parametrize("checkpointer_class", [ClassificationCheckpointer, KeepingCheckpointer])
def test_checkpointer_load_calls_load_model(tmp_path, checkpointer_class):
    """Both checkpointers override the private ``_load_model``: ``load()`` must still call it
    with the checkpoint and return its incompatible keys (missing keys, shapes)."""
    DetectionCheckpointer(nn.Linear(3, 2), str(tmp_path)).save("model")
    calls = []

    class Recording(checkpointer_class):
        def _load_model(self, checkpoint):
            calls.append(sorted(checkpoint["model"]))
            return super()._load_model(checkpoint)

    model = nn.Linear(3, 2)
    checkpointer = Recording(model, str(tmp_path))
    checkpointer.load(str(tmp_path / "model.pth"))
    assert calls == [["bias", "weight"]]
    incompatible = DetectionCheckpointer(nn.Linear(3, 2))._load_model({"model": {}})
    assert incompatible.missing_keys == ["weight", "bias"] and incompatible.incorrect_shapes == []


# --- evaluation/pascal_voc.py: PascalVOCDetectionEvaluator's private attributes ------------------


def test_pascal_voc_evaluator_keeps_what_ours_reads(miniatures):
    """PascalVOCEvaluator.evaluate reads detectron2's evaluator's private attributes: the gathered
    predictions per class id, the class names, the split's files and the VOC year."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    name = "mini_voc_2007_test"
    evaluator = PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    meta = MetadataCatalog.get(name)
    assert evaluator._dataset_name == name and evaluator._is_2007 is True
    assert list(evaluator._class_names) == list(meta.thing_classes)
    assert os.path.isfile(evaluator._image_set_path)
    first = DatasetCatalog.get(name)[0]
    assert os.path.isfile(evaluator._anno_file_template.format(first["image_id"]))
    instances = Instances((10, 10))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    instances.scores = torch.tensor([0.5])
    instances.pred_classes = torch.tensor([2])
    evaluator.process([{"image_id": first["image_id"]}], [{"instances": instances}])
    assert dict(evaluator._predictions) == {2: [f"{first['image_id']} 0.500 2.0 3.0 3.0 4.0"]}


# --- tools/miniatures: detectron2.data.datasets.builtin_meta._get_builtin_metadata --------------


def test_builtin_metadata_is_the_builtin_datasets_metadata():
    """The miniatures register themselves with ``_get_builtin_metadata`` so that they carry the
    metadata of detectron2's builtin datasets: it must still give that, with the keys they read."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    coco = _get_builtin_metadata("coco")
    assert coco["thing_classes"] == MetadataCatalog.get("coco_2017_val").thing_classes
    person = _get_builtin_metadata("coco_person")
    assert person["keypoint_names"] == MetadataCatalog.get("keypoints_coco_2017_val").keypoint_names
    separated = _get_builtin_metadata("coco_panoptic_separated")
    assert separated["stuff_dataset_id_to_contiguous_id"]
    standard = _get_builtin_metadata("coco_panoptic_standard")
    assert standard["thing_classes"] == MetadataCatalog.get("coco_2017_val_panoptic").thing_classes


# --- core: torch.nn.Module internals the feedback layers rely on ----------------------------------


def test_reversed_padding_is_what_f_pad_takes():
    """core/layers.py and core/mirror.py pad a non-zero padding_mode's input with the private
    ``_reversed_padding_repeated_twice``, as nn.Conv2d does itself."""
    conv = nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="reflect")
    assert list(conv._reversed_padding_repeated_twice) == [2, 2, 1, 1]
    x = torch.randn(1, 2, 6, 7)
    padded = torch.nn.functional.pad(x, conv._reversed_padding_repeated_twice, mode="reflect")
    expected = torch.nn.functional.conv2d(padded, conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), expected)


def test_module_registries_and_state_dict_hooks():
    """The feedback layers keep B in a module's ``_buffers``/``_parameters`` dicts and tag their
    state dict through ``_save_to_state_dict`` / ``_load_from_state_dict`` and the state dict's
    ``_metadata`` (core/layers.py, core/probe.py, core/convert.py): registering, popping and the
    per-module metadata must work as these use them."""
    seen = {}

    class Tagged(nn.Linear):
        def _save_to_state_dict(self, destination, prefix, keep_vars):
            super()._save_to_state_dict(destination, prefix, keep_vars)
            destination._metadata[prefix[:-1]]["tag"] = "x"

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
            seen["tag"] = local_metadata.get("tag")
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    net = nn.Sequential(Tagged(2, 2))
    net[0].register_buffer("feedback", torch.ones(2, 2))
    assert "0.feedback" in net.state_dict() and "feedback" in net[0]._buffers
    state = net.state_dict()
    assert state._metadata["0"]["tag"] == "x"
    net.load_state_dict(state)
    assert seen == {"tag": "x"}
    net[0]._buffers.pop("feedback")
    assert "0.feedback" not in net.state_dict()
    assert dict(net[0]._parameters) == dict(net[0].named_parameters(recurse=False))


def test_inductor_lists_the_options_of_each_compile_mode():
    """core/compile.py merges a mode's options (torch._inductor.list_mode_options) with its own
    CPU option: torch.compile takes a mode or options, not both."""
    from torch._inductor import list_mode_options

    for mode in ("default", "reduce-overhead", "max-autotune"):
        assert isinstance(list_mode_options(mode), dict)
