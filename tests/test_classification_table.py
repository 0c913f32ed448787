"""tools/classification_table.py: every arch x rule x seed trained, one table, the paper's
ordering checked."""

import json
import os
import subprocess
import sys

import classification_table as ct  # tools/, on the path by conftest.py
import pytest
import yaml

from bio_detectron.core.rules import available_rules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "classification_table.py")


def rows(arch, top1_by_rule):
    """classification.json rows of ``arch``: rule -> top-1 of seeds 0, 1, ... (top-5 = 90)."""
    return [
        {"arch": arch, "rule": rule, "seed": seed, "top1": top1, "top5": 90.0}
        for rule, top1s in top1_by_rule.items()
        for seed, top1 in enumerate(top1s)
    ]


# backprop 52 ± 2; sign_symmetry 46 ± 1 (6 below: holds); sign_symmetry_random_magnitude
# 46 ± 2 (level: within seed noise); feedback_alignment 51 ± 1 (5 above: reversed).
THREE_SEEDS = {
    "backprop": [50.0, 52.0, 54.0],
    "sign_symmetry": [45.0, 46.0, 47.0],
    "sign_symmetry_random_magnitude": [44.0, 46.0, 48.0],
    "feedback_alignment": [50.0, 51.0, 52.0],
}


def test_table_means_spread_and_ratios():
    stats = ct.summarise(rows("resnet18", THREE_SEEDS))["resnet18"]
    assert list(stats) == list(THREE_SEEDS)
    assert stats["sign_symmetry"] == {"top1": 46.0, "top5": 90.0, "sd": 1.0, "n": 3}
    lines = ct.table(stats).splitlines()
    assert lines[0] == ct.HEADER
    assert lines[2] == "| backprop | 52.0 ± 2.0 | 3 | 1.00 | 90.0 |"
    assert lines[3] == "| sign_symmetry | 46.0 ± 1.0 | 3 | 0.88 | 90.0 |"
    assert lines[5] == "| feedback_alignment | 51.0 ± 1.0 | 3 | 0.98 | 90.0 |"


def test_ordering_holds_within_noise_and_reversed():
    stats = ct.summarise(rows("resnet18", THREE_SEEDS))["resnet18"]
    checks = [(a, rel, b, word) for a, rel, b, word, _ in ct.ordering(stats)]
    assert checks == [
        ("backprop", ">=", "sign_symmetry", "holds"),
        ("sign_symmetry", ">", "sign_symmetry_random_magnitude", "within seed noise"),
        ("sign_symmetry_random_magnitude", ">", "feedback_alignment", "reversed"),
    ]
    # The noise is the larger sd: 2 apart with sds 1 and 2 is not within it, 1.9 apart is.
    a = {"top1": 50.0, "sd": 1.0}
    assert ct.verdict(a, {"top1": 48.0, "sd": 2.0}, ">")[0] == "holds"
    assert ct.verdict(a, {"top1": 48.1, "sd": 2.0}, ">")[0] == "within seed noise"
    # Equal means are in order for >=, not for >.
    assert ct.verdict(a, {"top1": 50.0, "sd": 0.0}, ">=")[0] == "within seed noise"
    assert ct.verdict({"top1": 50.0, "sd": 0.0}, {"top1": 50.0, "sd": 0.0}, ">=")[0] == "holds"
    assert ct.verdict({"top1": 50.0, "sd": 0.0}, {"top1": 50.0, "sd": 0.0}, ">")[0] == "reversed"


def test_ordering_with_one_seed_or_a_rule_missing():
    one_seed = {"backprop": [40.0], "sign_symmetry": [45.0], "feedback_alignment": [20.0]}
    stats = ct.summarise(rows("alexnet", one_seed))["alexnet"]
    assert ct.table(stats).splitlines()[2] == "| backprop | 40.0 | 1 | 1.00 | 90.0 |"
    checks = ct.ordering(stats)
    # sign_symmetry_random_magnitude did not run: sign_symmetry is compared with FA, by ">".
    assert [(a, rel, b, word) for a, rel, b, word, _ in checks] == [
        ("backprop", ">=", "sign_symmetry", "one seed only"),
        ("sign_symmetry", ">", "feedback_alignment", "one seed only"),
    ]
    assert "means are reversed" in checks[0][4] and "in that order" in checks[1][4]
    # Without backprop: no ratio, and the ordering starts at sign_symmetry.
    stats = ct.summarise(rows("alexnet", {"sign_symmetry": [45.0, 47.0]}))["alexnet"]
    assert ct.table(stats).splitlines()[2] == "| sign_symmetry | 46.0 ± 1.4 | 2 | - | 90.0 |"
    assert ct.ordering(stats) == []
    assert "fewer than two of its rules ran" in ct.report(rows("alexnet", {"backprop": [1.0]}))


def test_every_rule_has_a_resnet18_and_an_alexnet_config():
    ct.check_configs(["resnet18", "alexnet"], available_rules())
    assert set(available_rules()) <= set(ct.rules_with_config("alexnet"))
    assert "sign_symmetry_bm" in ct.rules_with_config("resnet18")


def test_a_rule_without_config_is_refused_by_name():
    with pytest.raises(ValueError) as error:
        ct.check_configs(["resnet50"], ["backprop", "weight_mirror"])
    message = str(error.value)
    assert f"no {ct.CONFIG.format('resnet50', 'weight_mirror')};" in message
    assert "rules with a resnet50 config: ['backprop', 'feedback_alignment', " in message
    command = [sys.executable, TOOL, "--archs", "alexnet", "--rules", "backprop", "no_such_rule"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert ct.CONFIG.format("alexnet", "no_such_rule") in result.stderr, result.stderr
    assert "'weight_mirror']" in result.stderr
    result = subprocess.run(
        [sys.executable, TOOL, "--", "SEED", "3"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "without ['SEED', 'MODEL.BIO.SEED'" in result.stderr


def test_schedule_crop_size_per_network():
    def opts(arch, *user):
        o = ct.run_opts(ct.CONFIG.format(arch, "backprop"), list(user), 2)
        return dict(zip(o[0::2], o[1::2]))

    assert opts("resnet18")["INPUT.CLASSIFICATION.SIZE"] == "32"
    assert opts("alexnet")["INPUT.CLASSIFICATION.SIZE"] == "64"  # its pools need >= 63 px
    resnet = opts("resnet18", "INPUT.CLASSIFICATION.SIZE", "48", "SOLVER.EPOCHS", "3")
    assert resnet["INPUT.CLASSIFICATION.SIZE"] == "48" and resnet["SOLVER.EPOCHS"] == "3"
    assert (resnet["SEED"], resnet["MODEL.BIO.SEED"]) == ("2", "2")


# A tiny folder (one training and one validation image per class, 32 px) and 3 iterations.
TINY = [
    "DATASETS.SHAPES_CLASSIFICATION.IMAGE_SIZE", "32",
    "DATASETS.SHAPES_CLASSIFICATION.NUM_TRAIN_PER_CLASS", "1",
    "DATASETS.SHAPES_CLASSIFICATION.NUM_VAL_PER_CLASS", "1",
    "SOLVER.IMS_PER_BATCH", "8",
    "SOLVER.MAX_ITER", "3",
    "SOLVER.WARMUP_ITERS", "0",
]  # fmt: skip


@pytest.mark.slow
def test_table_end_to_end(tmp_path):
    out = tmp_path / "table"
    command = [sys.executable, TOOL, "--archs", "resnet18", "--rules", "backprop", "sign_symmetry"]
    command += ["--seeds", "1", "--output-dir", str(out), "--", *TINY]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    runs = json.loads((out / "classification.json").read_text())["runs"]
    assert [(r["arch"], r["rule"], r["seed"], r["iterations"]) for r in runs] == [
        ("resnet18", "backprop", 1, 3),
        ("resnet18", "sign_symmetry", 1, 3),
    ]
    for r in runs:
        folder = out / "resnet18" / r["rule"] / "seed1"
        assert r["folder"] == str(folder)
        assert r["data"].endswith("photos_cls_v2_32px_train1_val1_seed0")
        with open(folder / "metrics.json") as f:
            last = [m for m in map(json.loads, f) if "val/top1" in m][-1]
        assert (r["top1"], r["top5"]) == (last["val/top1"], last["val/top5"])
        with open(folder / "config.yaml") as f:
            cfg = yaml.safe_load(f)
        assert cfg["SEED"] == 1 and cfg["MODEL"]["BIO"]["SEED"] == 1
        assert cfg["INPUT"]["CLASSIFICATION"]["SIZE"] == 32
        assert cfg["DATASETS"]["GENERATED_CLASSIFICATION"] == "photos"
        assert cfg["MODEL"]["BIO"]["RULE"] == r["rule"]
    table = (out / "table.md").read_text()
    assert table in result.stdout
    assert f"| backprop | {runs[0]['top1']:.1f} | 1 | 1.00 |" in table
    assert "- backprop >= sign_symmetry: **one seed only**" in table

    # Again: both runs are reused, nothing trains, the same table.
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reusing the finished run") == 2
    assert " eta: " not in again.stdout and table in again.stdout
