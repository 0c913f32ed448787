"""tools/visualize.py and bio_detectron.visualize: panels per model and ground truth, their
layout, predictions, errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from PIL import Image

from bio_detectron import add_bio_config, visualize
from bio_detectron.visualize import detections, drawing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(
    REPO, "configs/quick_schedules/retinanet_R_18_FPN_sign_symmetry_instant_test.yaml"
)
sys.path.insert(0, os.path.join(REPO, "tools"))
import visualize as visualize_tool  # noqa: E402  (tools/visualize.py: argument_parser, main)

SIZE = 96  # shapes_val_mini's images are 96 x 96


def instant_cfg(*opts):
    cfg = get_cfg()
    add_bio_config(cfg)
    cfg.merge_from_file(INSTANT)
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Two checkpoints of an untrained sign-symmetry RetinaNet: "prior" scores every anchor at
    about the classifier's prior (0.01); "confident" at about sigmoid(5) = 0.993 (its cls_score
    bias set to 5), with predictor weights 10 times larger than at initialisation (std 0.1) so
    that its scores and boxes depend on the image."""
    folder = str(tmp_path_factory.mktemp("models"))
    torch.manual_seed(0)
    model = build_model(instant_cfg())
    DetectionCheckpointer(model, save_dir=folder).save("prior")
    with torch.no_grad():
        model.head.cls_score.bias.fill_(5.0)
        model.head.cls_score.weight.mul_(10)
        model.head.bbox_pred.weight.mul_(10)
    DetectionCheckpointer(model, save_dir=folder).save("confident")
    return os.path.join(folder, "prior.pth"), os.path.join(folder, "confident.pth")


def run(command):
    """The tool's main on ``command``, a command line without the program (no spaces in paths)."""
    return visualize_tool.main(visualize_tool.argument_parser().parse_args(command.split()))


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def plain(image, scale):
    """A panel with nothing drawn on it."""
    empty = Instances(image.shape[:2], pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0))
    empty.pred_classes = torch.zeros(0, dtype=torch.int64)
    return visualize.draw(
        image, empty, visualize.class_colors(MetadataCatalog.get("shapes_val_mini")), scale
    )


@pytest.mark.slow
@pytest.mark.parametrize("input_format", ["RGB", "BGR"])
def test_predict_equals_default_predictor(weights, input_format):
    cfg = instant_cfg("MODEL.WEIGHTS", weights[1], "INPUT.FORMAT", input_format)
    model = visualize.load_model(cfg, weights[1])
    path = DatasetCatalog.get("shapes_val_mini")[0]["file_name"]
    rgb = read_image(path, format="RGB")
    ours = visualize.predict(cfg, model, rgb)
    theirs = DefaultPredictor(cfg)(read_image(path, format="BGR"))["instances"]
    # The channel order matters to this model (so the equalities below can fail).
    swapped = visualize.predict(cfg, model, rgb[:, :, ::-1])
    assert not torch.equal(swapped.pred_boxes.tensor, ours.pred_boxes.tensor)
    assert len(ours) == len(theirs) >= 5
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    assert torch.equal(ours.scores, theirs.scores)
    assert torch.equal(ours.pred_classes, theirs.pred_classes)
    assert ours.image_size == (SIZE, SIZE)


def test_ground_truth_as_instances():
    record = DatasetCatalog.get("shapes_val_mini")[0]
    boxes = torch.tensor([a["bbox"] for a in record["annotations"]])
    boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
    gt = visualize.ground_truth(record, masks=False)
    assert not gt.has("pred_masks") and not gt.has("scores")
    torch.testing.assert_close(gt.pred_boxes.tensor, boxes)
    assert gt.pred_classes.tolist() == [a["category_id"] for a in record["annotations"]]
    gt = visualize.ground_truth(record, masks=True)  # when a model predicts masks
    assert gt.pred_masks.shape == (len(boxes), SIZE, SIZE) and gt.pred_masks.dtype == torch.bool
    for mask, (x0, y0, x1, y1) in zip(gt.pred_masks, boxes.tolist()):  # each mask fills its box
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
        assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1
    # An image without objects: an empty panel, the image itself.
    empty = visualize.ground_truth(dict(record, annotations=[]), masks=True)
    image = read_image(record["file_name"], format="RGB")
    metadata = visualize.class_colors(MetadataCatalog.get("shapes_val_mini"))
    assert len(empty) == 0
    np.testing.assert_array_equal(visualize.draw(image, empty, metadata, 1), image)
    # At --scale 2 each pixel becomes 2 x 2.
    np.testing.assert_array_equal(plain(image, 2), image.repeat(2, axis=0).repeat(2, axis=1))


@pytest.mark.slow
def test_two_models_and_ground_truth_side_by_side(weights, tmp_path):
    out, grid = tmp_path / "out", tmp_path / "grid.png"
    scale, G, T = 2, visualize.GAP, visualize.TITLE_HEIGHT
    # RetinaNet keeps every score over 0 (its default drops those under 0.05): only
    # --score-threshold (0.5 by default) decides what is drawn.
    paths = run(
        f"--config-file {INSTANT} --weights {weights[0]} --config-file {INSTANT} --weights "
        f"{weights[1]} --dataset shapes_val_mini --num 2 --ground-truth --output {out} --scale "
        f"{scale} --grid {grid} --labels prior confident MODEL.RETINANET.SCORE_THRESH_TEST 0.0"
    )
    records = DatasetCatalog.get("shapes_val_mini")[:2]
    assert paths == [str(out / "000000.png"), str(out / "000001.png")]
    S = SIZE * scale
    for path, record in zip(paths, records):
        figure = png(path)
        # ground truth, prior, confident: 3 panels side by side under a title band
        assert figure.shape == (T + S, 3 * S + 2 * G, 3)
        panels = [figure[T:, i * (S + G) : i * (S + G) + S] for i in range(3)]
        assert (figure[T:, S : S + G] == 255).all()  # the gap between panels is white
        for i in range(3):  # each panel has a title: dark text on a white band
            assert (figure[:T, i * (S + G) : i * (S + G) + S] < 100).any()
        blank = plain(read_image(record["file_name"], format="RGB"), scale)
        # The ground truth is drawn: every box's outline changes the image.
        assert (panels[0] != blank).any(axis=2).sum() > 100
        for a in record["annotations"]:
            x, y, w, h = (round(v * scale) for v in a["bbox"])
            assert (panels[0][y - 1 : y + 2, x + w // 2] != blank[y - 1 : y + 2, x + w // 2]).any()
        # Scores of 0.01 are under the threshold of 0.5: nothing drawn; scores of 0.993 are over.
        np.testing.assert_array_equal(panels[1], blank)
        assert (panels[2] != blank).any(axis=2).sum() > 100
    # The grid: the same rows, titled once, a gap between them.
    rows = [png(p) for p in paths]
    figure = png(grid)
    assert figure.shape == (T + 2 * S + G, 3 * S + 2 * G, 3)
    np.testing.assert_array_equal(figure[: T + S], rows[0])
    np.testing.assert_array_equal(figure[T + S + G :], rows[1][T:])
    assert (figure[T + S : T + S + G] == 255).all()


@pytest.mark.slow
def test_input_files_with_config_options_after_them(weights, tmp_path):
    record = DatasetCatalog.get("shapes_val_mini")[0]
    image = read_image(record["file_name"], format="RGB")[:80, :]  # 80 x 96: not square
    path = tmp_path / "cells.png"
    Image.fromarray(image).save(path)
    command = f"--config-file {INSTANT} --weights {weights[1]} --output {tmp_path / 'out'} --input"
    args = visualize_tool.argument_parser().parse_args(
        [*command.split(), str(path), "MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "3"]
    )
    assert args.input[-1] == "3"  # argparse gives --input everything; main moves the options
    paths = visualize_tool.main(args)
    assert args.input == [str(path)]
    assert args.opts == ["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "3"]
    assert paths == [str(tmp_path / "out" / "cells.png")]
    figure = png(paths[0])
    assert figure.shape == (visualize.TITLE_HEIGHT + 80, SIZE, 3)  # one panel, the image's size
    assert (figure[visualize.TITLE_HEIGHT :] != plain(image, 1)).any(axis=2).sum() > 100


@pytest.mark.slow
def test_config_options_apply_to_every_model(weights, tmp_path, monkeypatch):
    seen = []
    build = visualize.load_model
    monkeypatch.setattr(detections, "load_model", lambda cfg, w: seen.append(cfg) or build(cfg, w))
    run(
        f"--config-file {INSTANT} --weights {weights[0]} --config-file {INSTANT} --weights "
        f"{weights[1]} --dataset shapes_val_mini --num 1 --output {tmp_path} "
        "MODEL.BIO.RULE feedback_alignment TEST.DETECTIONS_PER_IMAGE 3"
    )
    assert [(c.MODEL.BIO.RULE, c.TEST.DETECTIONS_PER_IMAGE) for c in seen] == [
        ("feedback_alignment", 3)
    ] * 2
    assert png(tmp_path / "000000.png").shape == (
        visualize.TITLE_HEIGHT + SIZE,
        2 * SIZE + visualize.GAP,
        3,
    )


@pytest.mark.slow
def test_figure_for_the_demo(weights, tmp_path, monkeypatch):
    titles, title_band = [], visualize.title_band
    monkeypatch.setattr(drawing, "title_band", lambda t, w: titles.append(t) or title_band(t, w))
    grid = str(tmp_path / "figures" / "detections_a_vs_b.png")
    models = [(INSTANT, weights[0]), (INSTANT, weights[1])]
    output = str(tmp_path / "o")
    assert visualize.figure(models, grid, "shapes_val_mini", num=3, scale=1, output=output) == grid
    assert png(grid).shape == (
        visualize.TITLE_HEIGHT + 3 * SIZE + 2 * visualize.GAP,
        3 * SIZE + 2 * visualize.GAP,
        3,
    )
    assert sorted(os.listdir(tmp_path / "o")) == ["000000.png", "000001.png", "000002.png"]
    # Titled with each model's rule: 3 per-image PNGs and the grid.
    assert titles == ["ground truth", "sign_symmetry", "sign_symmetry"] * 4


def test_errors_name_the_bad_argument(weights, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    ok = f"--config-file {INSTANT} --weights {weights[0]}"
    none_pth, none_yaml, gone = tmp_path / "none.pth", tmp_path / "none.yaml", tmp_path / "gone.png"
    cases = [
        (
            f"{ok} --config-file {INSTANT} --dataset shapes_val_mini",
            "2 --config-file but 1 --weights",
        ),
        (
            f"--config-file {INSTANT} --weights {none_pth} --dataset x",
            f"--weights {none_pth}: no such file",
        ),
        (
            f"--config-file {none_yaml} --weights {weights[0]} --dataset x",
            f"--config-file {none_yaml}: no such file",
        ),
        (f"{ok} --dataset shapes_nope", "--dataset 'shapes_nope' is not registered; registered: ["),
        (f"{ok} --input {bad}", f"cannot read image {bad}: cannot identify image file"),
        (f"{ok} --input {gone}", f"image {gone}: no such file"),
        (f"{ok} --input {bad} --ground-truth", "--ground-truth needs --dataset"),
        (f"{ok} --dataset shapes_val_mini --labels a b", "2 labels for 1 models"),
        (f"{ok} --dataset shapes_val_mini --num 0", "--num 0: must be at least 1"),
        (f"{ok} --input {bad} {tmp_path}/b/bad.jpg", "several images are named ['bad']"),
        # Weights of another architecture: detectron2 would only log the skipped parameters.
        # 64 FPN channels instead of 128 reshape 40: FPN lateral and output convs 3 x 2 x (weight,
        # GN weight, bias), P6 and P7 2 x (weight, bias); the towers 2 x 2 x (conv weight, bias,
        # GN weight, bias); the weights of cls_score and bbox_pred.
        (
            f"{ok} --dataset shapes_val_mini MODEL.FPN.OUT_CHANNELS 64",
            f"--weights {weights[0]} does not fit the model of its --config-file: it lacks 40 of",
        ),
    ]
    for command, message in cases:
        with pytest.raises(visualize.VisualizeError) as e:
            run(command)
        assert message in str(e.value), (command, str(e.value))


@pytest.mark.slow
def test_input_without_registered_test_dataset_warns(weights, tmp_path):
    path = tmp_path / "cells.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    ok_input = f"--config-file {INSTANT} --weights {weights[1]} --input {path} --output {tmp_path}"
    with pytest.warns(
        UserWarning, match=r"DATASETS.TEST=\('nope',\) of .* names no registered dataset"
    ):
        run(f"{ok_input} DATASETS.TEST ('nope',)")


@pytest.mark.slow
def test_command_line_error_exits_with_the_message(weights):
    tool = os.path.join(REPO, "tools", "visualize.py")
    command = f"--config-file {INSTANT} --config-file {INSTANT} --weights {weights[0]} --dataset x"
    cmd = [sys.executable, tool, *command.split()]
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "visualize: error: 2 --config-file but 1 --weights: give one --weights per --config-file, "
        f"in the same order ({[INSTANT, INSTANT]} / {[weights[0]]})"
    )


def test_visualize_builds_models_without_the_engine():
    """bio_detectron.visualize sits beside the engine, not above it: importing it and building a
    model imports no trainer."""
    code = (
        "import sys; from bio_detectron.visualize import detections; "
        "print(sorted(m for m in sys.modules if m.startswith('bio_detectron.engine')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def test_cuda_device_without_cuda_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"MODEL.DEVICE='cuda', but CUDA .*add MODEL.DEVICE cpu"):
        detections.setup_cfg(INSTANT, ["MODEL.DEVICE", "cuda"])
    assert detections.setup_cfg(INSTANT, ["MODEL.DEVICE", "cpu"]).MODEL.DEVICE == "cpu"
