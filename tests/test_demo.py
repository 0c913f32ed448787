"""tools/demo.py --budgets: what a sweep records, reuses and draws (training replaced by a stub)."""

import importlib.util
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")


@pytest.fixture
def demo(monkeypatch):
    monkeypatch.syspath_prepend(TOOLS)  # demo imports plot_budgets from its own folder
    spec = importlib.util.spec_from_file_location("demo_under_test", os.path.join(TOOLS, "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trained = []

    def fake_train(rule, config, output_dir, opts):
        os.makedirs(output_dir, exist_ok=True)
        budget = int(opts[opts.index("SOLVER.MAX_ITER") + 1])
        trained.append((rule.split("@")[0], budget, list(opts)))
        seed = int(opts[opts.index("SEED") + 1]) if "SEED" in opts else 0
        ap = budget / 100 + (10 if "backprop" in rule else 0) + 2 * seed
        # what a finished run leaves, as train() writes it
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump({"iteration": budget - 1, "bbox/AP": ap, "bbox/AP50": 50, "bbox/AP75": 20}, f)
        open(os.path.join(output_dir, "model_final.pth"), "w").close()
        with open(os.path.join(output_dir, module.COMMAND_FILE), "w") as f:
            json.dump(module.run_command(config, opts), f)
        return [rule, f"{ap:.1f}", "50.0", "20.0", "0:01:00", "1.0 min", str(budget), output_dir]

    monkeypatch.setattr(module, "train", fake_train)
    module.trained = trained
    return module


def _config(rule):
    return os.path.join(REPO, "configs", "Photos-Detection", f"retinanet_R_18_FPN_{rule}.yaml")


def _record(folder):
    with open(os.path.join(folder, "budgets.json")) as f:
        return json.load(f)


def test_sweeps_into_one_folder_add_up(demo, tmp_path):
    out = str(tmp_path / "photos")
    rules = ["backprop", "sign_symmetry"]
    demo.sweep(rules, [_config(r) for r in rules], out, [800, 1600], [], rerun=False)
    demo.sweep(["kolen_pollack"], [_config("kolen_pollack")], out, [1600], [], rerun=False)
    points = sorted((r["rule"], r["iterations"], r["AP"]) for r in _record(out)["runs"])
    assert points == [
        ("backprop", 800, 18.0),
        ("backprop", 1600, 26.0),
        ("kolen_pollack", 1600, 16.0),
        ("sign_symmetry", 800, 8.0),
        ("sign_symmetry", 1600, 16.0),
    ]
    assert [(r, b) for r, b, _ in demo.trained] == [
        ("backprop", 800),
        ("backprop", 1600),
        ("sign_symmetry", 800),
        ("sign_symmetry", 1600),
        ("kolen_pollack", 1600),
    ]
    assert os.path.getsize(os.path.join(out, "budgets.png")) > 0


def test_a_point_trained_again_replaces_the_old_one(demo, tmp_path):
    out = str(tmp_path / "photos")
    demo.sweep(["backprop"], [_config("backprop")], out, [800], [], rerun=False)
    demo.sweep(["backprop"], [_config("backprop")], out, [800], [], rerun=True)
    runs = _record(out)["runs"]
    assert [(r["rule"], r["iterations"]) for r in runs] == [("backprop", 800)]
    assert len(demo.trained) == 2


def test_points_with_other_options_are_not_mixed_in(demo, tmp_path, capsys):
    out = str(tmp_path / "photos")
    demo.sweep(["backprop"], [_config("backprop")], out, [800], ["SEED", "1"], rerun=False)
    demo.sweep(["sign_symmetry"], [_config("sign_symmetry")], out, [800], [], rerun=False)
    runs = _record(out)["runs"]
    assert [(r["rule"], r["opts"]) for r in runs] == [("sign_symmetry", [])]
    assert "['SEED', '1']" in capsys.readouterr().out


def test_another_config_folder_is_refused(demo, tmp_path):
    out = str(tmp_path / "runs")
    demo.sweep(["backprop"], [_config("backprop")], out, [800], [], rerun=False)
    shapes = os.path.join(REPO, "configs", "Shapes-Detection", "retinanet_R_18_FPN_backprop.yaml")
    with pytest.raises(SystemExit, match="Photos-Detection"):
        demo.sweep(["backprop"], [shapes], out, [800], [], rerun=False)


def test_budgets_reject_a_max_iter_option():
    import subprocess

    command = [sys.executable, os.path.join(TOOLS, "demo.py"), "--budgets", "800"]
    result = subprocess.run(
        command + ["SOLVER.MAX_ITER", "5"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "SOLVER.MAX_ITER" in result.stderr


def test_a_run_of_an_edited_config_is_not_reused(demo, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "Base.yaml").write_text("SOLVER:\n  BASE_LR: 0.02\n")
    leaf = configs / "retinanet_R_18_FPN_backprop.yaml"
    leaf.write_text('_BASE_: "Base.yaml"\n')
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    command = demo.run_command(str(leaf), ["SOLVER.MAX_ITER", "800"])
    for name, text in [
        (
            "metrics.json",
            json.dumps({"iteration": 799, "bbox/AP": 1, "bbox/AP50": 2, "bbox/AP75": 3}),
        ),
        ("model_final.pth", ""),
        (demo.COMMAND_FILE, json.dumps(command)),
    ]:
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    assert demo.finished_row("backprop", folder, command) is not None
    (configs / "Base.yaml").write_text("SOLVER:\n  BASE_LR: 0.01\n")  # an inherited file changes
    assert (
        demo.finished_row("backprop", folder, demo.run_command(str(leaf), command["opts"])) is None
    )


def test_a_recorded_run_of_an_edited_config_leaves_the_record(demo, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    for rule in ("backprop", "sign_symmetry"):
        (configs / f"retinanet_R_18_FPN_{rule}.yaml").write_text("SOLVER:\n  BASE_LR: 0.02\n")
    out = str(tmp_path / "runs")
    config = lambda rule: str(configs / f"retinanet_R_18_FPN_{rule}.yaml")  # noqa: E731
    demo.sweep(["backprop"], [config("backprop")], out, [800], [], rerun=False)
    (configs / "retinanet_R_18_FPN_backprop.yaml").write_text("SOLVER:\n  BASE_LR: 0.01\n")
    demo.sweep(["sign_symmetry"], [config("sign_symmetry")], out, [800], [], rerun=False)
    assert [r["rule"] for r in _record(out)["runs"]] == ["sign_symmetry"]


def _plot(monkeypatch):
    monkeypatch.syspath_prepend(TOOLS)
    import plot_budgets

    return plot_budgets


def test_seeds_train_each_point_once_per_seed_and_add_up(demo, tmp_path, capsys):
    out = str(tmp_path / "photos")
    rules = ["backprop", "sign_symmetry"]
    demo.sweep(rules, [_config(r) for r in rules], out, [800], [], rerun=False, seeds=[0, 1])
    trained = [(r, b, o[o.index("SEED") + 1]) for r, b, o in demo.trained]
    assert trained == [
        ("backprop", 800, "0"),
        ("backprop", 800, "1"),
        ("sign_symmetry", 800, "0"),
        ("sign_symmetry", 800, "1"),
    ]
    # a third seed later, into the same folder, adds to the first two; then all three are reused
    demo.sweep(rules, [_config(r) for r in rules], out, [800], [], rerun=False, seeds=[2])
    assert sorted(r["seed"] for r in _record(out)["runs"]) == [0, 0, 1, 1, 2, 2]
    demo.sweep(rules, [_config(r) for r in rules], out, [800], [], rerun=False, seeds=[0, 1, 2])
    assert len(demo.trained) == 6
    runs = _record(out)["runs"]
    assert sorted((r["rule"], r["seed"], r["AP"]) for r in runs) == [
        ("backprop", 0, 18.0),
        ("backprop", 1, 20.0),
        ("backprop", 2, 22.0),
        ("sign_symmetry", 0, 8.0),
        ("sign_symmetry", 1, 10.0),
        ("sign_symmetry", 2, 12.0),
    ]
    assert len({r["output"] for r in runs}) == 6 and all(
        r["output"].endswith(f"iter800_seed{r['seed']}") for r in runs
    )
    printed = capsys.readouterr().out
    assert "| backprop | 20.0 ± 2.0 (3 seeds) |" in printed
    assert "| sign_symmetry | 10.0 ± 2.0 (3 seeds) (0.50×) |" in printed


def test_seeds_refuse_a_seed_option_and_need_budgets():
    import subprocess

    demo = [sys.executable, os.path.join(TOOLS, "demo.py")]
    for args, named in [
        (["--budgets", "800", "--seeds", "0", "1", "SEED", "3"], "SEED"),
        (["--seeds", "0", "1"], "--budgets"),
    ]:
        result = subprocess.run(demo + args, capture_output=True, text=True)
        assert result.returncode != 0 and named in result.stderr, result.stderr


def test_plot_counts_side_by_side_folders_together(demo, monkeypatch, tmp_path, capsys):
    plot = _plot(monkeypatch)
    a, b, other = (str(tmp_path / n) for n in ("a", "b", "other"))
    rules = ["backprop", "kolen_pollack"]
    configs = [_config(r) for r in rules]
    demo.sweep(rules, configs, a, [800], [], rerun=False, seeds=[0])
    demo.sweep(rules, configs, b, [800], [], rerun=False, seeds=[1, 2])
    demo.sweep(rules, configs, other, [800], ["SOLVER.BASE_LR", "0.01"], rerun=False)
    panels = plot.panels_of([a, b, other])
    assert [(t, len(r)) for t, r in panels] == [
        ("Photos-Detection", 6),
        ("Photos-Detection (SOLVER.BASE_LR 0.01)", 2),
    ]
    mean, sd, n = plot.summarize(panels[0][1])["kolen_pollack"][800]
    assert (mean, round(sd, 6), n) == (10.0, 2.0, 3)
    figure = plot.plot_budgets([a, b, other], str(tmp_path / "f.png"), relative=True)
    assert os.path.getsize(figure) > 0
    with pytest.raises(SystemExit, match="seed 1"):  # the same seed twice would count twice
        plot.panels_of([a, b, b])


def test_a_seed_given_as_an_option_counts_as_that_seed(demo, monkeypatch, tmp_path):
    plot = _plot(monkeypatch)
    folders = [str(tmp_path / f"s{s}") for s in range(2)]
    for s, folder in enumerate(folders):
        opts = ["SEED", str(s)] if s else []
        demo.sweep(["backprop"], [_config("backprop")], folder, [800], opts, rerun=False)
    ((title, runs),) = plot.panels_of(folders)
    assert title == "Photos-Detection"
    assert plot.summarize(runs)["backprop"][800][2] == 2
