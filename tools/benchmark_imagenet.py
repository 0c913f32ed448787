#!/usr/bin/env python
"""
Images/s of the classification trainer (detectron2's loop and step trainer with all its hooks
and writers) against a bare PyTorch loop on the same model, data loader and optimizer.

The two alternate in rounds of ``--iters`` iterations, so that drifts of the machine's speed hit
both alike; the figure reported is the median over rounds of (trainer images/s / bare images/s
in the same round), by the wall clock and by the main process's CPU time. Checkpoints and
evaluation are off: they run once per epoch, not per step.

    python tools/benchmark_imagenet.py --config-file configs/ImageNet/resnet18_backprop.yaml \\
        --rounds 7 --iters 20 SOLVER.IMS_PER_BATCH 64 DATALOADER.NUM_WORKERS 8 \\
        SOLVER.AMP.ENABLED True

On a small shared CPU machine, tiny settings and one thread per process give steadier figures:

    OMP_NUM_THREADS=1 python tools/benchmark_imagenet.py --rounds 15 --iters 5 MODEL.DEVICE cpu \\
        INPUT.CLASSIFICATION.SIZE 64 SOLVER.IMS_PER_BATCH 16 DATALOADER.NUM_WORKERS 1
"""

import argparse
import contextlib
import json
import statistics
import tempfile
import time

import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from bio_detectron.config import add_bio_config, add_classification_config, check_model_device
from bio_detectron.engine.classification import build_classification_trainer


def setup(args, output_dir):
    cfg = get_cfg()
    add_bio_config(cfg)
    add_classification_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    check_model_device(cfg)
    # A long, flat schedule and no periodic checkpoint or evaluation within the benchmark.
    never = 10**9
    cfg.merge_from_list(["SOLVER.MAX_ITER", never, "SOLVER.STEP_EPOCHS", (), "SOLVER.EPOCHS", 1])
    cfg.merge_from_list(["SOLVER.CHECKPOINT_PERIOD", never, "TEST.EVAL_PERIOD", never])
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    return cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/ImageNet/resnet18_backprop.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20, help="iterations per variant and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations of each first")
    parser.add_argument("--json", help="append the results to this file as one JSON line")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config options, KEY VALUE ...")
    args = parser.parse_args()
    setup_logger(name="bio_detectron")

    with tempfile.TemporaryDirectory() as output_dir:
        cfg = setup(args, output_dir)
        trainer = build_classification_trainer(cfg)
        model, optimizer, scheduler = trainer.model, trainer.optimizer, trainer.scheduler
        step = trainer._trainer  # the inner step trainer (detectron2's DefaultTrainer layout)
        data = step._data_loader_iter  # the trainer's own iterator: one stream for both
        device = torch.device(cfg.MODEL.DEVICE)
        precision = trainer.precision  # float16 (CUDA, with a scaler), bfloat16 (CPU) or None
        amp = precision is not None
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def trainer_steps(n):
            for _ in range(n):
                trainer.before_step()
                trainer.run_step()
                trainer.after_step()
                trainer.iter += 1

        def bare_steps(n):
            for _ in range(n):
                batch = next(data)
                half = torch.autocast(device.type, dtype=precision) if amp else None
                with half or contextlib.nullcontext():
                    loss = model(batch)["loss_cls"]
                optimizer.zero_grad()
                if precision == torch.float16:
                    step.grad_scaler.scale(loss).backward()
                    step.grad_scaler.step(optimizer)
                    step.grad_scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()

        def timed(steps):
            """Returns images/s by the wall clock and by this process's CPU time."""
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            steps(args.iters)
            sync()
            images = args.iters * cfg.SOLVER.IMS_PER_BATCH
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            return images / wall, images / cpu

        trainer.iter = trainer.start_iter = 0
        trainer.max_iter = cfg.SOLVER.MAX_ITER
        with EventStorage(0) as trainer.storage:
            trainer.before_train()
            trainer_steps(args.warmup)
            bare_steps(args.warmup)
            rows = []
            for r in range(args.rounds):
                # Alternate which goes first, so that neither always follows the other.
                if r % 2 == 0:
                    t, b = timed(trainer_steps), timed(bare_steps)
                else:
                    b, t = timed(bare_steps), timed(trainer_steps)
                rows.append((t[0], b[0], t[0] / b[0], t[1] / b[1]))
                print(
                    f"round {r}: trainer {t[0]:8.1f} img/s   bare {b[0]:8.1f} img/s   ratio "
                    f"{t[0] / b[0]:.3f}   (by CPU time {t[1] / b[1]:.3f})"
                )

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"{cfg.MODEL.CLASSIFIER.NAME} depth {cfg.MODEL.RESNETS.DEPTH}, {cfg.MODEL.BIO.RULE}, "
        f"{cfg.INPUT.CLASSIFICATION.SIZE} px, batch {cfg.SOLVER.IMS_PER_BATCH}, AMP {amp}, "
        f"{cfg.DATALOADER.NUM_WORKERS} workers, on {name}, {torch.get_num_threads()} threads"
    )
    median = [statistics.median(r[i] for r in rows) for i in range(4)]
    print(
        f"median images/s: trainer {median[0]:.1f}, bare {median[1]:.1f}; median ratio "
        f"trainer/bare {median[2]:.3f}x (by the main process's CPU time: {median[3]:.3f}x, "
        "steadier on a shared CPU machine; on a GPU the wall-clock ratio is the one that counts)"
    )
    if args.json:
        record = {
            "benchmark": "imagenet_trainer",
            "classifier": cfg.MODEL.CLASSIFIER.NAME,
            "depth": cfg.MODEL.RESNETS.DEPTH,
            "rule": cfg.MODEL.BIO.RULE,
            "size": cfg.INPUT.CLASSIFICATION.SIZE,
            "batch": cfg.SOLVER.IMS_PER_BATCH,
            "amp": amp,
            "channels_last": cfg.MODEL.CLASSIFIER.CHANNELS_LAST,
            "workers": cfg.DATALOADER.NUM_WORKERS,
            "rounds": args.rounds,
            "iters": args.iters,
            "device": name,
            "torch": torch.__version__,
            "trainer_images_per_s": median[0],
            "bare_images_per_s": median[1],
            "ratio": median[2],
            "ratio_by_cpu_time": median[3],
        }
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
