"""torch.compile of converted models: whole graphs for every rule, through compile_model and
through a plain torch.compile(model), one compilation per mode, the rule's gradients, the hooks,
the trainers' switch, and a clear error where compiling cannot work.

Most tests compile with the "aot_eager" backend: dynamo and AOTAutograd trace exactly as with
Inductor (graph breaks and recompilations are decided there), without Inductor's code generation,
so they run in seconds. A slow test compiles with Inductor itself."""

import copy
import os
import sys

import pytest
import torch
import torch._dynamo
from detectron2.engine import SimpleTrainer
from torch import nn
from torch._dynamo.utils import counters

import bio_detectron as bd
from bio_detectron.core import compile as bio_compile
from bio_detectron.engine import AlignmentHook, WeightMirrorHook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
# The rules that send a layer's output gradient through B (direct feedback alignment sends the
# error at the model's outputs instead: it is not compiled, tests/test_dfa.py).
RULES = [r for r in bd.available_rules() if not bd.RULE_REGISTRY.get(r).error_feedback]

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """Convs (grouped, strided), BatchNorm, a detectron2-style conv with norm, linear layers."""

    def __init__(self):
        super().__init__()
        from detectron2.layers import Conv2d

        # No bias before BatchNorm: its gradient is zero in exact arithmetic, so only rounding.
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.conv3 = Conv2d(8, 8, 3, padding=1, norm=nn.GroupNorm(2, 8), activation=nn.ReLU())
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x, y=None):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.conv3(self.conv2(x))
        logits = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))
        return logits if y is None else nn.functional.cross_entropy(logits, y)


def _net(rule, scale="mean_abs"):
    torch.manual_seed(0)
    options = {} if rule == "backprop" else {"scale": scale}
    return bd.convert_model(Net(), rule, **options)


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 12, 12, generator=g), torch.randint(0, 5, (4,), generator=g))
            for _ in range(n)]  # fmt: skip


def _train(model, batches):
    """SGD steps; returns the parameters' (and feedback tensors') gradients of every step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grads = []
    for x, y in batches:
        x = x.clone().requires_grad_(True)
        opt.zero_grad()
        model(x, y).backward()
        step = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        step["input"] = x.grad.clone()
        grads.append(step)
        opt.step()
    return grads


def _compile_counts():
    breaks = sum(counters["graph_break"].values())
    return breaks, counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_compiles_into_one_graph_per_mode_with_the_rules_gradients(rule):
    eager, compiled = _net(rule), _net(rule)
    torch._dynamo.reset()
    counters.clear()
    bd.compile_model(compiled, backend="aot_eager")
    batches = _batches(3)
    got, expected = _train(compiled, batches), _train(eager, batches)
    assert _compile_counts() == (0, 1)  # no break, one graph: the first step compiled it
    for step_got, step_expected in zip(got, expected):
        assert step_got.keys() == step_expected.keys()
        for name in step_got:
            torch.testing.assert_close(step_got[name], step_expected[name], rtol=1e-5, atol=1e-6)
    compiled.eval()
    with torch.no_grad():
        compiled(batches[0][0])
        compiled(batches[1][0])
    assert _compile_counts() == (0, 2)  # and one for evaluation
    if rule == "kolen_pollack":  # B got W's gradient and update, compiled as eager
        conv = compiled.conv1
        assert got[0]["conv1.feedback"].equal(got[0]["conv1.weight"])
        torch.testing.assert_close(conv.feedback, eager.conv1.feedback, rtol=1e-5, atol=1e-6)
    if rule not in ("backprop",):  # the rule changed the input gradient: it is not backprop's
        reference = _train(_net("backprop"), batches[:1])[0]["input"]
        assert not torch.allclose(got[0]["input"], reference, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("scale", ["kaiming", "rms", 0.5])
def test_every_scale_of_sign_symmetry_compiles_into_one_graph_with_eager_gradients(scale):
    eager, compiled = _net("sign_symmetry", scale), _net("sign_symmetry", scale)
    torch._dynamo.reset()
    counters.clear()
    bd.compile_model(compiled, backend="aot_eager")
    batches = _batches(2)
    got, expected = _train(compiled, batches), _train(eager, batches)
    assert _compile_counts() == (0, 1)
    for step_got, step_expected in zip(got, expected):
        for name in step_expected:
            torch.testing.assert_close(step_got[name], step_expected[name], rtol=1e-5, atol=1e-6)
    other = _train(_net("sign_symmetry", "mean_abs"), batches[:1])[0]["input"]
    assert not torch.allclose(got[0]["input"], other, rtol=1e-3, atol=1e-5)  # the scale acted


def test_a_checkpoint_restores_the_feedback_of_a_compiled_model_without_recompiling(tmp_path):
    trained = _net("feedback_alignment")
    _train(trained, _batches(1))
    state = trained.state_dict()
    torch._dynamo.reset()
    counters.clear()
    model = _net("feedback_alignment")
    model.load_state_dict(state)
    bd.compile_model(model, backend="aot_eager")
    assert model.conv1.feedback.equal(trained.conv1.feedback)  # restored, not made again
    _train(model, _batches(3))
    assert _compile_counts() == (0, 1)
    assert set(model.state_dict()) == set(state)  # the stock keys: no _orig_mod. prefix


def _resnet18(rule):
    import torchvision

    torch.manual_seed(0)
    options = {} if rule == "backprop" else {"scale": "mean_abs"}
    return bd.convert_model(torchvision.models.resnet18(num_classes=5), rule, **options)


def _plain_compile_breaks(model, steps=2):
    """Graph breaks of ``torch.compile(model)`` (no compile_model) in its first training steps."""
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 5, (2,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
    return sum(counters["graph_break"].values())


@pytest.mark.parametrize("rule", RULES)
def test_plain_torch_compile_of_every_rule_has_no_graph_break_and_the_rules_gradients(rule):
    # torch.compile(model), the call every PyTorch user types: the feedback tensor is made when
    # the weights are set, so the forward holds no generator that would break the graph.
    eager, model = _net(rule), _net(rule)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    batches = _batches(2)
    got = [
        {k.replace("_orig_mod.", ""): v for k, v in step.items()}
        for step in _train(compiled, batches)
    ]
    expected = _train(eager, batches)
    assert _compile_counts() == (0, 1)
    for step_got, step_expected in zip(got, expected):
        assert step_got.keys() == step_expected.keys()
        for name in step_got:
            torch.testing.assert_close(step_got[name], step_expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES)
def test_plain_torch_compile_of_a_converted_resnet18_has_no_graph_break(rule):
    assert _plain_compile_breaks(_resnet18(rule)) == 0


# Dynamo says, as a warning, what it cannot trace: here that is the point of the test.
@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace the builtin:UserWarning")
def test_feedback_made_in_the_forward_would_break_a_plain_torch_compile(monkeypatch):
    # What the tests above guard against: a feedback tensor made inside the training forward,
    # with a seeded generator (as when it was made lazily), breaks the graph there.
    from bio_detectron.core.layers import FeedbackLayer

    for_backward = FeedbackLayer._feedback_for_backward

    def made_lazily(self):
        self.make_feedback_now()
        return for_backward(self)

    model = _net("feedback_alignment")
    assert _plain_compile_breaks(model, steps=1) == 0
    monkeypatch.setattr(FeedbackLayer, "_feedback_for_backward", made_lazily)
    assert _plain_compile_breaks(_net("feedback_alignment"), steps=1) > 0


def test_no_cpp_compiler_is_an_error_and_the_hook_names_the_key(monkeypatch):
    from bio_detectron.engine.hooks import CompileHook

    monkeypatch.setattr(bio_compile.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RuntimeError, match="^torch.compile .* C\\+\\+ compiler"):
        bd.compile_model(_net("sign_symmetry"))
    hook = CompileHook(_net("sign_symmetry"), key="MODEL.BIO.COMPILE")
    with pytest.raises(RuntimeError, match="^MODEL.BIO.COMPILE: torch.compile .* C\\+\\+ compiler"):
        hook.before_train()
    with pytest.raises(ValueError, match="^mode 'fast' is not one of"):
        bd.compile_model(_net("sign_symmetry"), mode="fast")


@pytest.mark.parametrize(
    "value, message",
    [
        ("fast", "mode 'fast' is not one of torch.compile's"),
        (3, "=3: use True/False, a torch.compile mode, or a dict"),
        ({"enabled": True, "modes": "default"}, r"unknown option\(s\) \['modes'\]"),
    ],
)
def test_bad_compile_switches_name_the_key(value, message):
    override = "{enabled:true,modes:default}" if isinstance(value, dict) else value
    from bio_detectron.engine.hooks import compile_options
    from bio_detectron.engine.lazy import load_lazy_config

    with pytest.raises(ValueError, match="MODEL.BIO.COMPILE.*" + message):
        compile_options(value, "MODEL.BIO.COMPILE")
    config = os.path.join(
        REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.py"
    )
    with pytest.raises(
        ValueError, match="train.bio_compile.*" + message
    ):  # before anything is built
        load_lazy_config(config, [f"train.bio_compile={override}"])
    assert compile_options({"enabled": False, "mode": "fast"}, "k") is None  # off: not checked
    assert compile_options("max-autotune", "k") == {
        "mode": "max-autotune",
        "backend": "inductor",
        "key": "k",
    }


def test_a_compiled_module_the_forward_goes_around_is_an_error_naming_it():
    from bio_detectron.engine.hooks import CompileHook

    class Around(nn.Module):  # compiles "backbone" by default, then calls its child directly
        def __init__(self):
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.body = _net("sign_symmetry")

        def forward(self, batch):
            return {"loss": self.backbone.body(*batch)}

    def run(model):
        trainer = SimpleTrainer(model, iter(_batches(3)), torch.optim.SGD(model.parameters(), 0.1))
        trainer.register_hooks([CompileHook(backend="aot_eager", key="MODEL.BIO.COMPILE")])
        trainer.train(0, 3)
        return trainer.iter

    torch._dynamo.reset()
    with pytest.raises(
        RuntimeError, match=r"MODEL.BIO.COMPILE: Around's forward did not call .*\['backbone'\]"
    ):
        run(Around())
    model = Around()
    model.bio_compile_targets = ("backbone.body",)  # named: compiled and called
    assert run(model) == 3 and bio_compile.uncalled_compiled(model) == []
    model.bio_compile_targets = ("backbone.head",)
    with pytest.raises(ValueError, match=r"Around.bio_compile_targets names \['backbone.head'\]"):
        bd.compile_model(model)


def test_inductor_options_on_the_cpu_turn_layout_optimization_off(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    bd.compile_model(_net("sign_symmetry"))
    bd.compile_model(_net("sign_symmetry"), mode="max-autotune")
    bd.compile_model(_net("sign_symmetry"), options={"layout_optimization": True, "x": 1})
    bd.compile_model(_net("sign_symmetry"), backend="aot_eager", mode="max-autotune")
    assert calls == [
        {"backend": "inductor", "options": {"layout_optimization": False}},
        {  # the mode's own options, as torch.compile takes either a mode or options
            "backend": "inductor",
            "options": {
                "max_autotune": True,
                "triton.cudagraphs": True,
                "coordinate_descent_tuning": True,
                "layout_optimization": False,
            },
        },  # fmt: skip
        {"backend": "inductor", "options": {"layout_optimization": True, "x": 1}},
        {"backend": "aot_eager", "mode": "max-autotune"},
    ]
    assert bio_compile.inductor_defaults("cuda") is None  # torch.compile's own on CUDA


def _hooked_run(compiled):
    """Two rules' hooks on a SimpleTrainer: alignment every 2 steps, a mirror step every 2."""
    model = _net("weight_mirror")

    class Loss(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, batch):
            return {"loss": self.net(*batch)}

    wrapped = Loss(model)
    if compiled:
        torch._dynamo.reset()
        counters.clear()
        bd.compile_model(wrapped, ["net"], backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(wrapped, iter(_batches(6)), opt)
    trainer.register_hooks(
        [WeightMirrorHook(2, wrapped, initial_steps=1, noise_batch=2), AlignmentHook(2, wrapped)]
    )
    torch.manual_seed(3)
    trainer.train(0, 6)
    return model, trainer.storage


def test_mirror_and_alignment_hooks_work_on_a_compiled_model_as_in_eager_mode():
    (eager, eager_storage), (compiled, storage) = _hooked_run(False), _hooked_run(True)
    # Traced once with the hooks in place (the probe runs eagerly): no recompilation.
    assert _compile_counts() == (0, 1)
    # The same trajectory: weights, and B after its mirror steps.
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for key in ("alignment/net.conv1/grad_angle", "alignment/net.fc2/weight_angle"):
        angles = [v for v, _ in storage.history(key).values()]
        expected = [v for v, _ in eager_storage.history(key).values()]
        assert len(angles) == 3 and angles == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["sign_symmetry", "kolen_pollack"])
def test_inductor_gradients_equal_eager_ones_as_closely_as_the_stock_models(rule):
    torch._dynamo.reset()
    stock, stock_compiled = Net(), Net()
    stock_compiled.load_state_dict(stock.state_dict())
    stock_compiled.forward = torch.compile(stock_compiled.forward)
    eager, compiled = _net(rule), _net(rule)
    bd.compile_model(compiled)
    batches = _batches(2)

    def deviation(a, b):
        return max(((a[n] - b[n]).abs().max() / b[n].abs().max()).item() for n in a if n in b)

    stock_dev = deviation(_train(stock_compiled, batches)[1], _train(stock, batches)[1])
    ours = _train(compiled, batches)[1]
    ours_eager = _train(eager, batches)[1]
    assert deviation(ours, ours_eager) <= max(10 * stock_dev, 1e-5)
    backprop = _train(_net("backprop"), batches)[1]
    assert deviation(ours, backprop) > 100 * max(stock_dev, 1e-6)  # and differ from backprop's


@pytest.mark.slow
def test_retinanet_parts_compile_with_no_break_of_ours(tmp_path):
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from test_detection import instant_cfg

    cfg = instant_cfg("MODEL.BIO.RULE", "feedback_alignment", "MODEL.BIO.SCALE", "mean_abs")
    mapper = DatasetMapper(cfg, is_train=True)
    data = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get("shapes_train_mini")[:2]]

    def run(rule):
        cfg.MODEL.BIO.RULE = rule
        torch.manual_seed(0)
        model = build_model(cfg)
        torch._dynamo.reset()
        counters.clear()
        parts = bd.compile_model(model, backend="aot_eager")
        assert sorted(parts) == ["backbone", "head"]
        with EventStorage():
            for _ in range(2):
                sum(model(data).values()).backward()
        return _compile_counts(), model

    (stock_counts, _), ((breaks, graphs), model) = run("backprop"), run("feedback_alignment")
    assert breaks == stock_counts[0]  # detectron2's own, if any; none of this package's
    assert graphs == stock_counts[1]
    assert bd.rules_of(model)["head.cls_score"] == "feedback_alignment"


@pytest.mark.slow
def test_train_net_compiles_trains_and_resumes_with_the_stock_keys(tmp_path):
    import train_net
    from detectron2.engine import default_argument_parser

    config = os.path.join(
        REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml"
    )

    def train(max_iter, *flags):
        opts = [
            "MODEL.BIO.COMPILE.ENABLED",
            "True",
            "MODEL.BIO.COMPILE.BACKEND",
            "aot_eager",
            "MODEL.BIO.RULE",
            "kolen_pollack",
            "SOLVER.MAX_ITER",
            str(max_iter),
            "DATASETS.TEST",
            "()",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "OUTPUT_DIR",
            str(tmp_path),
        ]
        torch._dynamo.reset()
        train_net.main(
            default_argument_parser().parse_args(["--config-file", config, *flags, *opts])
        )
        return torch.load(str(tmp_path / "model_final.pth"), weights_only=False)

    first = train(3)
    assert not any("_orig_mod" in k for k in first["model"])
    assert "head.cls_score.feedback" in first["model"] and first["iteration"] == 2
    resumed = train(5, "--resume")
    assert resumed["iteration"] == 4


@pytest.mark.slow
def test_classification_trainer_compiles_once_and_trains_as_in_eager_mode(tmp_path):
    from test_classification import SHAPES, make_cfg

    from bio_detectron.data import classification_folder
    from bio_detectron.engine.classification import ClassificationTrainer

    root = classification_folder("shapes", root=str(tmp_path / "datasets"), **SHAPES)

    def train(compiled):
        from detectron2.utils.env import seed_all_rng

        torch._dynamo.reset()
        counters.clear()
        seed_all_rng(0)  # the loader's order
        opts = ["MODEL.BIO.RULE", "kolen_pollack", "SOLVER.MAX_ITER", 3, "TEST.EVAL_PERIOD", 100]
        if compiled:
            opts += ["MODEL.BIO.COMPILE.ENABLED", True, "MODEL.BIO.COMPILE.BACKEND", "aot_eager"]
        trainer = ClassificationTrainer(make_cfg(tmp_path / str(compiled), root, *opts))
        trainer.resume_or_load(resume=False)
        trainer.train()
        losses = [v for v, _ in trainer.storage.history("total_loss").values()]
        return trainer.unwrapped_model, losses, _compile_counts()

    eager, eager_losses, (_, eager_graphs) = train(False)
    model, losses, (breaks, graphs) = train(True)
    assert eager_graphs == 0 and breaks == 0
    # bio_compile_targets: the whole model, in training then in evaluation.
    assert graphs == 2 and bio_compile.compile_targets(model) == [("", model)]
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    for (name, a), b in zip(model.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)
    saved = torch.load(tmp_path / "True" / "model_final.pth", weights_only=False)["model"]
    assert not any("_orig_mod" in k for k in saved) and any(k.endswith(".feedback") for k in saved)


@pytest.mark.slow
def test_lazy_tool_compiles_with_train_bio_compile(tmp_path):
    import lazyconfig_train_net as tool
    from detectron2.engine import default_argument_parser

    config = os.path.join(
        REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.py"
    )
    torch._dynamo.reset()
    counters.clear()
    opts = [
        "train.bio_compile={backend:aot_eager}",
        "model.rule=kolen_pollack",
        f"train.output_dir={tmp_path}",
    ]
    args = default_argument_parser().parse_args(["--config-file", config, *opts])
    tool.main(args)
    breaks, graphs = _compile_counts()
    assert graphs == 4 and breaks == 0  # backbone and head, in training and evaluation
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert saved["iteration"] == 3 and "head.cls_subnet.0.feedback" in saved["model"]
    assert not any("_orig_mod" in k for k in saved["model"])


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["sign_symmetry", "kolen_pollack"])
@pytest.mark.parametrize("arch", ["ResNetClassifier", "AlexNet"])
def test_classifiers_compile_whole_in_training_and_evaluation(arch, rule):
    from test_classification import make_cfg

    from bio_detectron.modeling.classification import build_classifier

    size = 64 if arch == "AlexNet" else 32
    cfg = make_cfg(
        "", "", "MODEL.CLASSIFIER.NAME", arch, "MODEL.BIO.RULE", rule,
        "INPUT.CLASSIFICATION.SIZE", size,
    )  # fmt: skip
    torch.manual_seed(0)
    eager = build_classifier(cfg, num_classes=3)
    model = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    assert list(bd.compile_model(model, backend="aot_eager")) == [""]
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (4, 3, size, size), generator=g, dtype=torch.uint8),
                torch.randint(0, 3, (4,), generator=g)) for _ in range(2)]  # fmt: skip
    for net in (model, eager):
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        for batch in batches:
            opt.zero_grad()
            net(batch)["loss_cls"].backward()
            opt.step()
    assert _compile_counts() == (0, 1)
    model.eval(), eager.eval()
    with torch.no_grad():
        got = [model(images) for images, _ in batches]
        torch.testing.assert_close(got[1], eager(batches[1][0]), rtol=1e-4, atol=1e-4)
    assert _compile_counts() == (0, 2)
