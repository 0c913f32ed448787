"""
The CUDA path: gradients of every rule under autocast and channels_last, SyncBatchNorm with the
alignment probe, an NCCL run of tools/train_net.py and the AMP classification trainer.

Every test here needs a CUDA device and is skipped without one, with the reason (``pytest -ra``
lists them). ``bash tools/check_gpu.sh`` runs them on a GPU machine. No other test touches CUDA.
"""

import contextlib
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.engine.train_loop import HookBase
from torch import nn

import bio_detectron as bd
from bio_detectron.config import add_bio_config, add_classification_config
from bio_detectron.core import probe as al
from bio_detectron.data import classification_folder
from bio_detectron.engine.classification import build_classification_trainer

# cuBLAS is deterministic (torch.use_deterministic_algorithms) only with a fixed workspace, read
# when the process first uses cuBLAS: set before any test here runs a linear layer on the GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (on a GPU machine: bash tools/check_gpu.sh)",
)

DEVICE = torch.device("cuda")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The rules that send a layer's output gradient through B (direct feedback alignment sends the
# error at the model's outputs instead: tests/test_dfa.py).
RULES = [r for r in bd.available_rules() if not bd.RULE_REGISTRY.get(r).error_feedback]

# ------------------------------------------------------------------------------------------------
# Tolerances: whole-tensor relative error ||got - ref|| / ||ref|| against a float64 reference.
#
# Under autocast a gradient entry is a sum of products of operands rounded to the format's
# mantissa (unit roundoff u = 2^-11 for float16, 2^-8 for bfloat16), accumulated in float32 and
# rounded to the format once more on output. Each entry is then off by about u relative to its
# size, independently, so the whole tensor by about u too (CPU autocast, run through these very
# tests with the device set to "cpu", gave 0.7u to 1.2u). We allow 8u: room for kernels that
# round partial sums (split-K GEMMs) and for the few entries that cancel. Without autocast the
# layers run in float32 with TF32 turned off (see `ieee_fp32`): u = 2^-24, sums of at most a few
# hundred products, so 1e-5 is far above the error and far below any mistake.
# ------------------------------------------------------------------------------------------------
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-5, "fp16": 8 * 2.0**-11, "bf16": 8 * 2.0**-8}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).norm() / ref.norm())


@pytest.fixture
def ieee_fp32():
    """float32 convolutions and matmuls in IEEE float32: cuDNN uses TF32 (a 10-bit mantissa) for
    float32 convolutions by default on Ampere and later, which would dwarf the tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def deterministic():
    """Bitwise-reproducible kernels (cuDNN and cuBLAS), so that two runs can be compared with
    torch.equal; an op without a deterministic CUDA kernel raises, naming itself."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]


def autocast(precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Gradients of single layers, every rule, under fp32 / fp16 / bf16 autocast
# ------------------------------------------------------------------------------------------------
# name -> (layer, input shape). Channel counts are multiples of 8 (tensor-core kernels).
LAYERS = {
    "conv": (lambda: nn.Conv2d(8, 16, 3, padding=1), (4, 8, 12, 12)),
    "conv_groups_stride_dilation": (
        lambda: nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, groups=4),
        (4, 16, 13, 11),
    ),
    "conv_transposed": (
        lambda: nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1, groups=2),
        (4, 16, 7, 9),
    ),
    "linear": (lambda: nn.Linear(64, 48), (6, 5, 64)),
}


def _native(layer: nn.Module, x, weight, bias):
    """The layer's op by native autograd, with ``weight`` in place of the layer's weight."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(layer, nn.ConvTranspose2d):
        return F.conv_transpose2d(
            x, weight, bias, layer.stride, layer.padding, layer.output_padding, layer.groups,
            layer.dilation,
        )  # fmt: skip
    return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _reference_grads(layer, x, grad_output, weight):
    """
    Native autograd in float64 with ``weight`` in W's place: the input gradient it gives is the
    one computed with ``weight``; the weight and bias gradients of a convolution or linear layer do
    not depend on the weight's value, so the same pass gives the true ones.
    """
    x = x.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    _native(layer, x, w, b).backward(grad_output.double())
    return x.grad, w.grad, b.grad


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("rule", RULES)
def test_layer_gradients_under_autocast_match_float64_reference(rule, kind, precision, ieee_fp32):
    make_layer, shape = LAYERS[kind]
    torch.manual_seed(0)
    layer = bd.convert_model(make_layer(), rule, seed=3).to(DEVICE)
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    with autocast(precision):
        y = layer(x)
        with torch.no_grad():
            y_native = _native(layer, x, layer.weight, layer.bias)
    expected_dtype = PRECISIONS[precision] or torch.float32
    assert y.dtype == expected_dtype and y_native.dtype == expected_dtype
    # The forward pass is the stock op, in the same precision.
    tol = TOLERANCE[precision]
    assert rel_err(y, y_native) < tol, "forward output differs from the native op's"

    g = torch.randn(y.shape, device=DEVICE).to(y.dtype)  # the output gradient, in y's precision
    y.backward(g)
    grads = {"input": x.grad, "weight": layer.weight.grad, "bias": layer.bias.grad}
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, f"{name} gradient is {grad.dtype}, not the parameter's"

    B = layer.feedback_weight()  # float32, made from the same weights (and state) as the step's
    reference = dict(zip(grads, _reference_grads(layer, x, g, B)))
    for name, grad in grads.items():
        err = rel_err(grad, reference[name])
        assert err < tol, (
            f"{rule} {kind} {precision}: {name} gradient off the float64 reference by a relative "
            f"{err:.2e} (tolerance {tol:.1e})"
        )
    # The test can tell B from W: with W, the input gradient would be far outside the tolerance.
    if rule != "backprop":
        exact = _reference_grads(layer, x, g, layer.weight)[0]
        assert rel_err(exact, reference["input"]) > 4 * tol


# ------------------------------------------------------------------------------------------------
# channels_last
# ------------------------------------------------------------------------------------------------
def _conv_net():
    """Convolutions (one grouped with a stride, one transposed), BatchNorm and a linear layer."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4, bias=False),  # BN: no bias
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 2, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 8, 3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


# Contiguous and channels_last runs use different kernels, which sum in different orders: in
# float32 (no TF32) that is rounding at u = 2^-24; under float16 autocast a rounding difference of
# one layer's output (u = 2^-11) reaches the next ones, through 4 convolutions and 2 BatchNorms.
CHANNELS_LAST_TOLERANCE = {"fp32": 1e-5, "fp16": 2e-2}


@pytest.mark.parametrize("precision", list(CHANNELS_LAST_TOLERANCE))
@pytest.mark.parametrize("rule", RULES)
def test_channels_last_gives_the_same_gradients(rule, precision, ieee_fp32):
    torch.manual_seed(0)
    contiguous = bd.convert_model(_conv_net(), rule, seed=1).to(DEVICE).train()
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    assert channels_last[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 16, 16, device=DEVICE)
    weights = torch.randn(8, 10, device=DEVICE)
    outputs = []
    channels_last[0].register_forward_hook(lambda m, i, out: outputs.append(out))

    grads = []
    for model, memory_format in (
        (contiguous, torch.contiguous_format),
        (channels_last, torch.channels_last),
    ):
        inp = x.clone(memory_format=memory_format).requires_grad_()
        with autocast(precision):
            out = model(inp)
        (out.float() * weights).sum().backward()
        grads.append({"input": inp.grad, **{n: p.grad for n, p in model.named_parameters()}})

    # The converted path keeps the memory format (no silent copy back to NCHW), and both models
    # made the same fixed feedback at their first step.
    assert outputs[0].is_contiguous(memory_format=torch.channels_last)
    for name, buffer in contiguous.named_buffers():
        if name.endswith("feedback"):
            assert torch.equal(buffer, channels_last.get_buffer(name)), name
    tol = CHANNELS_LAST_TOLERANCE[precision]
    for name in grads[0]:
        err = rel_err(grads[1][name], grads[0][name])
        assert err < tol, f"{rule} {precision}: {name} gradient differs by {err:.2e} (tol {tol})"


# ------------------------------------------------------------------------------------------------
# torch.compile: Inductor's CUDA kernels, and CUDA graphs (mode "reduce-overhead")
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("rule", RULES)
def test_compiled_gradients_are_the_rules(rule, mode, ieee_fp32):
    """Compiled (Inductor; CUDA graphs with reduce-overhead) gradients equal the eager rule's, as
    closely as the compiled stock model's equal its eager ones, and no graph breaks."""
    from torch._dynamo.utils import counters

    def grads(model, steps=3):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        out = []
        for i in range(steps):
            g = torch.Generator(device="cpu").manual_seed(i)
            x = torch.randn(8, 3, 16, 16, generator=g).to(DEVICE).requires_grad_()
            opt.zero_grad()
            model(x).float().square().mean().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            out.append({"input": x.grad, **grads})
            opt.step()
        return out[-1]

    def deviation(a, b):
        return max(rel_err(a[n], b[n]) for n in b)

    torch.manual_seed(0)
    stock = _conv_net().to(DEVICE).train()
    stock_compiled = copy.deepcopy(stock)
    stock_compiled.forward = torch.compile(stock_compiled.forward, mode=mode)
    stock_dev = deviation(grads(stock_compiled), grads(stock))
    converted = bd.convert_model(copy.deepcopy(stock), rule, seed=1)
    eager = copy.deepcopy(converted)
    torch._dynamo.reset()
    counters.clear()
    bd.compile_model(converted, mode=mode)
    got, expected = grads(converted), grads(eager)
    assert sum(counters["graph_break"].values()) == 0
    assert deviation(got, expected) <= max(10 * stock_dev, 1e-5), (rule, mode, stock_dev)


# ------------------------------------------------------------------------------------------------
# SyncBatchNorm, DistributedDataParallel (NCCL) and the alignment probe
# ------------------------------------------------------------------------------------------------
ALIGNED = ["conv1", "conv2", "fc1", "fc2"]


class TinyNet(nn.Module):
    """tests/test_alignment.py's TinyNet, with only ops that have deterministic CUDA kernels:
    a mean over the image instead of adaptive pooling, and a one-hot cross-entropy instead of
    nll_loss. Its loss is divided by an EMA kept as a plain attribute, like RetinaNet's."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, num_classes)
        self.normalizer = 1.0

    def forward(self, batch):
        x = F.relu(self.bn1(self.conv1(batch["image"])))
        x = F.relu(self.bn2(self.conv2(x)))
        logits = self.fc2(F.relu(self.fc1(self.drop(x.mean((2, 3))))))
        correct = float((logits.argmax(1) == batch["label"]).sum())
        self.normalizer = 0.9 * self.normalizer + 0.1 * (1.0 + correct)
        nll = -(F.log_softmax(logits.float(), 1) * batch["onehot"]).sum(1).mean()
        return {
            "loss_cls": nll * (4.0 / self.normalizer),
            "loss_reg": 1e-3 * logits.float().square().mean(),
        }


def _batches(n, batch_size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        label = torch.randint(0, 5, (batch_size,), generator=g)
        batches.append(
            {
                "image": torch.randn(batch_size, 3, 8, 8, generator=g).to(DEVICE),
                "label": label.to(DEVICE),
                "onehot": F.one_hot(label, 5).float().to(DEVICE),
            }
        )
    return batches


class _GradReader(HookBase):
    """Keeps the gradients the training backward left in .grad, before the optimizer step."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def after_backward(self):
        self.grads.append({n: getattr(self.model, n).weight.grad.clone() for n in ALIGNED})


def _train(trainer_cls, rule, hooks_for, iters=4):
    """Trains a SyncBatchNorm TinyNet on CUDA, wrapped in DDP, with the given hooks."""
    torch.manual_seed(0)
    model = bd.convert_model(TinyNet(), rule, seed=0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(DEVICE).train()
    assert isinstance(model.bn1, nn.SyncBatchNorm)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[DEVICE.index or 0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    trainer = trainer_cls(ddp, _batches(iters), optimizer)
    hooks = hooks_for(model)
    trainer.register_hooks(hooks)
    torch.manual_seed(5)  # seeds the CUDA generator too: the dropout masks
    trainer.train(0, iters)
    return model, optimizer, trainer.storage, hooks


def _assert_same_training(a, b):
    (model_a, opt_a, *_), (model_b, opt_b, *_) = a, b
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert model_a.normalizer == model_b.normalizer
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) == len(list(model_a.parameters()))
    for i in state_a:
        assert torch.equal(state_a[i]["momentum_buffer"], state_b[i]["momentum_buffer"])


@pytest.fixture
def nccl_group(tmp_path):
    """A one-process NCCL process group, as tools/train_net.py's processes have."""
    import datetime

    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("this PyTorch build has no NCCL")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    torch.cuda.set_device(DEVICE.index or 0)
    dist.init_process_group(
        "nccl",
        init_method=f"file://{tmp_path / 'nccl_store'}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("trainer_cls", [SimpleTrainer, AMPTrainer])
@pytest.mark.parametrize("rule", ["feedback_alignment", "sign_symmetry"])
def test_sync_batchnorm_probe_on_cuda_leaves_trajectory_unchanged(
    rule, trainer_cls, nccl_group, deterministic, monkeypatch
):
    # With one GPU the process group has one process, so SyncBatchNorm normalises with the local
    # batch (its all-gather path needs two GPUs); what runs on CUDA is the rest: SyncBatchNorm
    # layers inside NCCL DDP, the probe swapping their forward, and the CUDA generator it restores.
    def with_probe(model):
        return [al.AlignmentHook(1, model), _GradReader(model)]

    probed = []
    original_probe = al._probe

    def recording_probe(*args, **kwargs):
        grads, call_order = original_probe(*args, **kwargs)
        probed.append(grads)
        return grads, call_order

    monkeypatch.setattr(al, "_probe", recording_probe)
    with_hook = _train(trainer_cls, rule, with_probe)
    without = _train(trainer_cls, rule, lambda model: [_GradReader(model)])
    _assert_same_training(with_hook, without)

    # The probe ran at every step, on CUDA, and its metrics are real angles.
    storage = with_hook[2]
    for name in ALIGNED:
        history = storage.history(f"alignment/{name}/grad_angle").values()
        assert [it for _, it in history] == [0, 1, 2, 3]
        assert all(0 <= v <= 180 for v, _ in history)
    assert storage.history("alignment/fc2/grad_angle").latest() < 1e-3  # exact output gradient
    assert storage.history("alignment/conv1/grad_angle").latest() > 1  # the rule's, not exact
    assert len(probed) == 4 and all(g[n][0].is_cuda for g in probed for n in ALIGNED)

    if trainer_cls is SimpleTrainer:
        # The probe's rule pass replays the training forward exactly (batch, dropout masks drawn
        # from the restored CUDA generator, loss normaliser): the step's own gradients. (Under
        # AMP the step's .grad is scaled and in float16 arithmetic; the probe's is float32.)
        reader = with_hook[3][1]
        for step, grads in enumerate(probed):
            for name in ALIGNED:
                assert torch.equal(grads[name][0], reader.grads[step][name]), (name, step)


# ------------------------------------------------------------------------------------------------
# tools/train_net.py in a one-process NCCL group
# ------------------------------------------------------------------------------------------------
INSTANT = os.path.join(
    REPO, "configs", "quick_schedules", "retinanet_R_18_FPN_sign_symmetry_instant_test.yaml"
)
# The process detectron2's launch() starts for each GPU, run as one process of world size 1 (for
# one GPU launch() starts none and makes no process group; _distributed_worker is what its
# spawned processes run): NCCL process group, torch.cuda.set_device, then train_net.main.
_NCCL_WORKER = """
import json, sys
import torch.distributed as dist
from detectron2.engine import default_argument_parser
from detectron2.engine.launch import _distributed_worker

sys.path.insert(0, sys.argv[1])
import train_net


def main(args):
    assert dist.get_backend() == "nccl" and dist.get_world_size() == 1, dist.get_backend()
    results = train_net.main(args)
    print("BIO_RESULTS " + json.dumps(results))


args = default_argument_parser().parse_args(sys.argv[3:])
_distributed_worker(0, main, 1, 1, 0, sys.argv[2], (args,))
"""


def test_train_net_in_an_nccl_process_group(tmp_path):
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("this PyTorch build has no NCCL")
    out = tmp_path / "output"
    cmd = [
        sys.executable, "-c", _NCCL_WORKER, os.path.join(REPO, "tools"),
        f"file://{tmp_path / 'nccl_store'}",
        "--config-file", INSTANT,
        "MODEL.DEVICE", "cuda", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    line = [x for x in proc.stdout.splitlines() if x.startswith("BIO_RESULTS ")][-1]
    bbox = json.loads(line.split(" ", 1)[1])["bbox"]
    # Evaluated; NaN when a model this young detects nothing above the score threshold.
    assert {"AP", "AP50", "AP75"} <= set(bbox)
    assert all(math.isnan(v) or 0 <= v <= 100 for v in bbox.values()), bbox
    ckpt = torch.load(out / "model_final.pth", weights_only=False)
    assert ckpt["iteration"] == 1 and (out / "model_0000001.pth").exists()
    # Trained on the GPU: checkpoints keep the tensors' device.
    assert ckpt["model"]["head.cls_score.weight"].is_cuda
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    records = [json.loads(x) for x in open(out / "metrics.json")]
    last = [r for r in records if "total_loss" in r][-1]
    assert last["iteration"] == 1
    losses = {k: v for k, v in last.items() if k == "total_loss" or k.startswith("loss_")}
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses.values()), losses
    # The quick config's alignment hook (period 2) probed the CUDA model at iteration 1.
    assert 0 <= last["alignment/all/grad_angle"] <= 180


# ------------------------------------------------------------------------------------------------
# The classification trainer with SOLVER.AMP.ENABLED
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return classification_folder(
        "shapes",
        root=str(tmp_path_factory.mktemp("datasets")),
        image_size=32,
        num_train_per_class=4,
        num_val_per_class=2,
    )


@pytest.mark.parametrize("rule", ["sign_symmetry", "feedback_alignment"])
def test_amp_classification_trainer(tmp_path, shapes_root, rule):
    cfg = get_cfg()
    add_bio_config(cfg)
    add_classification_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "ImageNet", "Base-Classification.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cuda",
            "MODEL.BIO.RULE", rule,
            "MODEL.CLASSIFIER.CHANNELS_LAST", True,
            "SOLVER.AMP.ENABLED", True,
            "DATASETS.IMAGENET_ROOT", shapes_root,
            "INPUT.CLASSIFICATION.SIZE", 32,
            "SOLVER.IMS_PER_BATCH", 4,
            "SOLVER.MAX_ITER", 2,
            "DATALOADER.NUM_WORKERS", 0,
            "SEED", 0,
            "OUTPUT_DIR", str(tmp_path),
        ]
    )  # fmt: skip
    cfg.freeze()
    trainer = build_classification_trainer(cfg)
    assert trainer.precision is torch.float16 and type(trainer._trainer) is AMPTrainer
    assert trainer._trainer.grad_scaler.is_enabled()
    model = trainer.unwrapped_model
    conv = model.backbone.bottom_up.stem.conv1
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert bd.rules_of(model)["backbone.bottom_up.stem.conv1"] == rule
    before = {k: v.clone() for k, v in model.state_dict().items()}

    trainer.resume_or_load(resume=False)
    results = trainer.train()

    assert trainer.iter == 2
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert 0 <= results["val"]["top1"] <= 100
    after = model.state_dict()
    key = "backbone.bottom_up.stem.conv1.weight"
    assert not torch.equal(after[key], before[key])
    for k, v in after.items():
        assert v.is_cuda, k
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
        if k.endswith(".feedback"):  # fixed: made from the same initial weights, then kept
            assert torch.equal(v, before[k]), k
    assert (tmp_path / "model_final.pth").exists()
