"""Where a fine-tuning step's time goes on a GPU: each part timed alone, then torch.profiler's top ops.

    python -m benchmarks.profile_step --device cuda --models deit_small deit_tiny
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from benchmarks import harness
from cait_cli.method.variants import compressed_variant
from cait_cli.models.loading import load_model
from cait_cli.pipeline.measuring.measure import synchronize
from cait_cli.pipeline.planning.latency import schedule_at
from cait_cli.pipeline.training.train import (
    LogitsOnly,
    TrainConfig,
    distill_loss,
    make_optimizer,
    train_step,
)


def ms_per_call(fn: Callable[[], object], device: torch.device, calls: int = 10) -> float:
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return 1000 * (time.perf_counter() - start) / calls


def setup(model_name: str, batch: int, device: torch.device, merge: bool, keep: float):
    """(teacher, student, images, labels) on `device`: the student merged at half depth if `merge`."""
    base = load_model(model_name, weights="random").model.to(device).eval()
    schedule = schedule_at(base, (0.5,) if merge else ())
    student = LogitsOnly(compressed_variant(base, schedule, keep=keep, multiple=8).to(device)).train()
    images = torch.randn(batch, 3, *base.patch_embed.img_size, device=device)
    labels = torch.randint(0, base.num_classes, (batch,), device=device)
    return base, student, images, labels


def parts(model_name: str, batch: int, device: torch.device, merge: bool, keep: float) -> Callable[[], None]:
    base, student, images, labels = setup(model_name, batch, device, merge, keep)
    cfg = TrainConfig(steps=100, amp=True)
    optimizer = make_optimizer(student, cfg)
    auto = lambda: torch.autocast(device.type, dtype=torch.bfloat16)

    def teacher() -> None:
        with auto(), torch.no_grad():
            base(images)

    def student_fwd() -> None:
        with auto(), torch.no_grad():
            student(images)

    def student_fwd_bwd() -> None:
        with auto():
            loss = distill_loss(student(images), base(images).detach(), labels, cfg.loss)
        loss.backward()

    def plain_fwd_bwd() -> None:  # the uncompressed timm model, as a yardstick
        with auto():
            loss = base(images).float().logsumexp(-1).mean()
        loss.backward()

    def optim() -> None:
        nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        optimizer.step()

    def step() -> None:
        train_step(student, base, images, labels, optimizer, cfg, 3)

    print(f"\n{model_name} merge={merge} keep={keep} batch {batch}: ms per call")
    for name, fn in (("teacher fwd", teacher), ("student fwd", student_fwd),
                     ("teacher+student fwd+bwd", student_fwd_bwd),
                     ("plain timm fwd+bwd", plain_fwd_bwd), ("clip+AdamW", optim), ("train_step", step)):
        print(f"  {name:26s} {ms_per_call(fn, device):8.2f}", flush=True)
    return step


def step_ms(model_name: str, batch: int, device: torch.device, fused: bool) -> float:
    """ms per train_step of a merged, 70%-kept student, with AdamW's foreach or fused kernels."""
    base, student, images, labels = setup(model_name, batch, device, merge=True, keep=0.7)
    cfg = TrainConfig(steps=100, amp=True)
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")}
              for g in make_optimizer(student, cfg).param_groups]
    optimizer = torch.optim.AdamW(groups, fused=fused)
    return ms_per_call(lambda: train_step(student, base, images, labels, optimizer, cfg, 3), device)


def profile(step: Callable[[], None], device: torch.device, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        synchronize(device)
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


def main() -> None:
    parser = harness.make_parser(__doc__, device="cuda", models=["deit_small"], train_batch=128)
    parser.add_argument("--rows", type=int, default=18)
    parser.add_argument("--sweep", action="store_true", help="only train_step's ms by batch and AdamW kind")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256], help="batch sizes of --sweep")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.sweep:
        for model in args.models:
            for batch in args.batches:
                for fused in (False, True):
                    ms = step_ms(model, batch, device, fused)
                    print(f"{model} batch {batch} fused={fused}: {ms:.1f} ms, {1000 * batch / ms:.0f} img/s", flush=True)
        return
    for model in args.models:
        parts(model, args.batch_size, device, merge=False, keep=1.0)
        step = parts(model, args.batch_size, device, merge=True, keep=0.7)
        profile(step, device, args.rows)


if __name__ == "__main__":
    harness.run_script(main)
