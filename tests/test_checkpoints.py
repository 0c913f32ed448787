"""When a rule's feedback tensor is made, and what a checkpoint restores (docs/usage.md,
"Processes and checkpoints: what is guaranteed"): it is made when the weights it describes are
set (conversion, a checkpoint's weights loaded), never by a forward pass; a checkpoint carrying
it made by the same rule restores it exactly; one without it gets it made from its weights; one
whose came from another rule or other options is not taken, with a warning naming the layer."""

import copy
import logging
from collections import OrderedDict

import pytest
import torch
from torch import nn

import bio_detectron as bd
from bio_detectron.core.rules import layer_seed


def _model(rule="feedback_alignment_signed_init", seed=0, **options):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(64, 3)
    )
    return bd.convert_model(net, rule, **options)


def _train_step(net):
    net.train()
    net(torch.randn(2, 3, 8, 8)).square().sum().backward()


def _signed_init(w):  # feedback_alignment_signed_init, scale mean_abs: sign(W0) * mean|W0|
    return torch.sign(w) * w.abs().mean()


def test_feedback_is_made_at_conversion_and_never_by_a_forward_pass():
    net = _model(scale="mean_abs")
    w0 = net[0].weight.detach().clone()
    torch.testing.assert_close(net[0].feedback, _signed_init(w0))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-3.0)  # weights changed by hand, not loaded: B is not made again ...
        net(torch.randn(2, 3, 8, 8))  # ... by evaluation
    _train_step(net)  # ... nor by training
    torch.testing.assert_close(net[0].feedback, _signed_init(w0))
    torch.testing.assert_close(net[0].feedback_weight(), _signed_init(w0))  # what it will use


def test_checkpoint_without_feedback_gets_feedback_from_its_weights():
    stock = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(64, 3)
    )
    torch.manual_seed(5)
    for p in stock.parameters():
        nn.init.normal_(p)
    net = _model(rule="feedback_alignment", scale="mean_abs", seed=9)
    _train_step(net)  # B made from the random init ...
    result = net.load_state_dict(stock.state_dict(), strict=True)  # ... then a stock checkpoint
    assert result.missing_keys == [] and result.unexpected_keys == []
    expected = {}
    for i in (0, 2, 4):
        w = stock[i].weight.detach()
        g = torch.Generator().manual_seed(layer_seed(0, str(i)))
        expected[i] = torch.randn(w.shape, generator=g) * w.abs().mean()
        torch.testing.assert_close(net[i].feedback, expected[i])  # made as the weight loaded
        assert not net[i]._feedback_restored
    _train_step(net)
    for i in (0, 2, 4):
        torch.testing.assert_close(net[i].feedback, expected[i])


def test_checkpoint_of_the_same_rule_restores_feedback_exactly(caplog):
    a = _model(rule="feedback_alignment", scale="mean_abs", seed=1)
    _train_step(a)
    b = _model(rule="feedback_alignment", scale="mean_abs", seed=2)
    with caplog.at_level(logging.WARNING, logger="bio_detectron"):
        b.load_state_dict(a.state_dict())
    assert caplog.records == []
    with torch.no_grad():
        b[0].weight.mul_(2)
    _train_step(b)  # not made again: the checkpoint's B is the run's
    for i in (0, 2, 4):
        assert torch.equal(b[i].feedback, a[i].feedback)


@pytest.mark.parametrize(
    "other,options",
    [
        ("sign_symmetry_random_magnitude", {}),  # another rule's state (|R|, not B)
        ("feedback_alignment", {"scale": "kaiming"}),  # the same rule with another scale
    ],
)
def test_checkpoint_of_another_rule_is_not_taken(other, options, caplog):
    a = _model(rule=other, **options)
    _train_step(a)
    b = _model(rule="feedback_alignment", scale="mean_abs", seed=3)
    with caplog.at_level(logging.WARNING, logger="bio_detectron"):
        b.load_state_dict(a.state_dict())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "0.feedback: the checkpoint's feedback was made by" in messages[0]
    assert bd.build_rule(other, **options).tag() in messages[0]
    assert "feedback_alignment(scale='mean_abs')" in messages[0]
    _train_step(b)
    w = a[0].weight.detach()
    g = torch.Generator().manual_seed(layer_seed(0, "0"))
    torch.testing.assert_close(b[0].feedback, torch.randn(w.shape, generator=g) * w.abs().mean())


def test_checkpoint_without_a_record_of_its_rule_is_taken_with_a_warning(caplog):
    a = _model(rule="feedback_alignment", seed=1)
    _train_step(a)
    plain = {k: v.clone() for k, v in a.state_dict().items()}  # a copy loses the metadata
    b = _model(rule="feedback_alignment", seed=2)
    with caplog.at_level(logging.WARNING, logger="bio_detectron"):
        b.load_state_dict(plain)
    assert "does not record which rule made this feedback tensor" in caplog.records[0].getMessage()
    _train_step(b)
    assert torch.equal(b[0].feedback, a[0].feedback)


def test_tags_survive_torch_save_and_detectron2_checkpointer(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    a = _model(rule="feedback_alignment", scale="mean_abs", seed=1)
    _train_step(a)
    DetectionCheckpointer(a, save_dir=str(tmp_path)).save("ckpt")
    b = _model(rule="feedback_alignment", scale="mean_abs", seed=2)
    DetectionCheckpointer(b).load(str(tmp_path / "ckpt.pth"))
    assert b[0]._feedback_restored
    assert torch.equal(b[0].feedback, a[0].feedback)
    torch.save(a.state_dict(), tmp_path / "sd.pth")
    metadata = torch.load(tmp_path / "sd.pth")._metadata
    assert metadata["0"]["bio_rule"] == "feedback_alignment(scale='mean_abs')"


def test_classification_checkpointer_keeps_tags_when_stripping_ddp_prefix(tmp_path, caplog):
    from bio_detectron.engine.classification import ClassificationCheckpointer

    a = _model(rule="feedback_alignment", seed=1)
    _train_step(a)
    sd = a.state_dict()
    ddp = OrderedDict(("module." + k, v) for k, v in sd.items())
    ddp._metadata = OrderedDict(
        (("module." + k) if k else "module", v) for k, v in sd._metadata.items()
    )
    torch.save({"model": ddp}, tmp_path / "ddp.pth")
    b = _model(rule="feedback_alignment", seed=2)
    with caplog.at_level(logging.WARNING, logger="bio_detectron"):
        ClassificationCheckpointer(b).load(str(tmp_path / "ddp.pth"))
    assert [r for r in caplog.records if "feedback" in r.getMessage()] == []
    assert torch.equal(b[0].feedback, a[0].feedback)


def test_make_feedback_now():
    net = _model(scale="mean_abs")
    with torch.no_grad():
        net[2].weight.neg_()
    bd.make_feedback_now(net)
    torch.testing.assert_close(net[2].feedback, _signed_init(net[2].weight.detach()))
    assert not net[2]._feedback_restored


def test_make_feedback_now_can_keep_what_a_checkpoint_restored():
    a = _model(rule="feedback_alignment", seed=1)
    b = _model(rule="feedback_alignment", seed=2)
    b.load_state_dict(a.state_dict())
    b.add_module("5", bd.convert_model(nn.Linear(3, 2), "feedback_alignment", scale="mean_abs"))
    with torch.no_grad():
        b[5].weight.neg_()
    bd.make_feedback_now(b, keep_restored=True)
    assert torch.equal(b[0].feedback, a[0].feedback)
    w = b[5].weight.detach()
    g = torch.Generator().manual_seed(layer_seed(0, ""))
    torch.testing.assert_close(b[5].feedback, torch.randn(w.shape, generator=g) * w.abs().mean())


def test_deepcopy_keeps_feedback_and_where_it_came_from():
    a = _model(rule="feedback_alignment", seed=1)
    b = _model(rule="feedback_alignment", seed=2)
    b.load_state_dict(a.state_dict())
    clone = copy.deepcopy(b)
    assert clone[0]._feedback_restored and torch.equal(clone[0].feedback, a[0].feedback)
    made = copy.deepcopy(_model(scale="mean_abs"))
    assert not made[0]._feedback_restored
    torch.testing.assert_close(made[0].feedback, _signed_init(made[0].weight.detach()))
