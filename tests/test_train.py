import pytest
import torch
from support import tiny_vit

from cait_cli.method.atme import alternating_schedule
from cait_cli.method.cdcp import attach_gates
from cait_cli.method.model import patch_vit
from cait_cli.pipeline.training.loop import run_phase
from cait_cli.pipeline.training.train import TrainConfig, lr_factor, make_optimizer


def gated_vit() -> torch.nn.Module:
    model = patch_vit(tiny_vit())
    attach_gates(model)
    return model


def test_scores_train_at_their_own_rate_without_decay():
    cfg = TrainConfig(steps=10, lr=1e-4, score_lr=2e-2)
    optimizer = make_optimizer(gated_vit(), cfg)
    score_group = optimizer.param_groups[-1]
    assert score_group["lr"] == cfg.score_lr and score_group["weight_decay"] == 0.0
    assert optimizer.param_groups[0]["weight_decay"] == cfg.weight_decay


def test_merge_weights_train_at_their_own_rate_without_decay():
    model = patch_vit(tiny_vit(), alternating_schedule([1, 2], (8, 8)))
    attach_gates(model)
    alphas = [param for name, param in model.named_parameters() if name.endswith(".alpha")]
    assert alphas
    for merge_lr, want in ((None, 1e-4), (3e-2, 3e-2)):  # None: the weights' rate
        optimizer = make_optimizer(model, TrainConfig(steps=10, lr=1e-4, merge_lr=merge_lr))
        group = next(g for g in optimizer.param_groups if any(p is alphas[0] for p in g["params"]))
        assert group["lr"] == want and group["weight_decay"] == 0.0 and len(group["params"]) == len(alphas)


def test_adamw_keeps_its_default_kernels_off_the_gpu():
    optimizer = make_optimizer(gated_vit(), TrainConfig(steps=10))
    assert not optimizer.defaults["fused"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_adamw_takes_the_fused_kernels_on_the_gpu():
    optimizer = make_optimizer(gated_vit().cuda(), TrainConfig(steps=10))
    assert optimizer.defaults["fused"]


def test_batch_and_lr_follow_the_device_and_the_global_batch(tmp_path):
    from cait_cli.pipeline.job import CompressConfig, resolved

    auto = CompressConfig(model="m", target_speedup=1.5, out=tmp_path / "o")
    on_cpu, on_gpu = resolved(auto, torch.device("cpu"), 1), resolved(auto, torch.device("cuda"), 2)
    assert (on_cpu.batch_size, on_cpu.lr, on_cpu.compile) == (64, 1e-4, False)
    assert (on_gpu.batch_size, on_gpu.compile) == (256, True) and on_gpu.lr == pytest.approx(1e-4 * 512 / 64)
    given = resolved(CompressConfig(model="m", target_speedup=1.5, out=tmp_path / "o", batch_size=8, lr=3e-4,
                                    compile=False), torch.device("cuda"), 4)
    assert (given.batch_size, given.lr, given.compile) == (8, 3e-4, False)  # what the user gave is kept
    assert resolved(CompressConfig(model="m", target_speedup=1.5, out=tmp_path / "o", batch_size=8),
                    torch.device("cpu"), 1).lr == pytest.approx(1e-4 / 8)


def test_sigterm_raises_only_inside_the_block_and_only_on_the_main_thread():
    import signal
    import threading

    from cait_cli.pipeline.training.stopping import Terminated, exit_code, sigterm_raises

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as stopped:
        with sigterm_raises():
            signal.raise_signal(signal.SIGTERM)
    assert exit_code(stopped.value) == 143 and exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is before
    failed = []

    def elsewhere():  # signal.signal would raise ValueError off the main thread
        try:
            with sigterm_raises():
                pass
        except BaseException as err:
            failed.append(err)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert not failed and signal.getsignal(signal.SIGTERM) is before


def test_a_continuous_schedule_is_one_warm_up_and_cosine_across_the_phases():
    whole = TrainConfig(steps=10, warmup_steps=2)
    calibrate = TrainConfig(steps=4, warmup_steps=2, schedule_steps=10)
    finetune = TrainConfig(steps=6, warmup_steps=2, before=4, schedule_steps=10)
    phases = [lr_factor(s, calibrate) for s in range(4)] + [lr_factor(s, finetune) for s in range(6)]
    assert phases == [lr_factor(s, whole) for s in range(10)]
    assert lr_factor(0, TrainConfig(steps=6, warmup_steps=2)) < lr_factor(0, finetune)  # no second warm-up


class RecordedBatches:
    """Training batches that note which steps of the run were asked for."""

    def __init__(self) -> None:
        self.asked = []

    def iterate(self, start, stop, device):
        self.asked.append((start, stop))
        for step in range(start, stop):
            yield step, (torch.randn(2, 3, 32, 32), torch.full((2,), -1))


def test_a_phase_after_others_takes_the_batches_after_theirs():
    teacher = tiny_vit()
    batches, seen = RecordedBatches(), []
    run_phase(patch_vit(tiny_vit()), teacher, batches, TrainConfig(steps=3, before=5, schedule_steps=8),
              torch.device("cpu"), phase="finetune", before_step=seen.append)
    assert batches.asked == [(5, 8)] and seen == [0, 1, 2]  # the run's batches 5-7, the phase's steps 0-2
