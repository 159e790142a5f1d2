"""Distillation from a chosen teacher (issue 39): soft, hard or both on logits, tokens on the merged grid,
and `--teacher` checked against the model's label space before anything runs."""
import copy
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support import make_image_folder, save_tiny_timm_dir, synthetic_table, tiny_vit
from typer.testing import CliRunner

from cait_cli.errors import CaitError
from cait_cli.interface.card import model_card
from cait_cli.interface.cli import app
from cait_cli.method.atme import alternating_schedule, cell_means, grid_after, unmerge
from cait_cli.method.model import patch_vit
from cait_cli.models.loading import load_model
from cait_cli.pipeline.reports.compress import CompressReport
from cait_cli.pipeline.training.distill import WithTokens, hard_loss, merge_axes, merged_tokens, soft_loss
from cait_cli.pipeline.training.teacher import check_teacher, check_token_teacher
from cait_cli.pipeline.training.train import Loss, distill_loss, distill_outputs, objective

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)
CPU = torch.device("cpu")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def logits(seed: int, batch: int = 6, classes: int = 5) -> torch.Tensor:
    return torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed)) * 3


UNLABELLED = torch.full((6,), -1)


def test_soft_loss_at_a_temperature_is_the_scaled_kl_of_the_softened_logits():
    teacher, student = logits(0), logits(1)
    softened = F.softmax(teacher / 2, -1)
    by_hand = (softened * (softened.log() - F.log_softmax(student / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(soft_loss(student, teacher, 2.0), by_hand)
    torch.testing.assert_close(soft_loss(student, teacher, 1.0), soft_loss(student, teacher))
    assert soft_loss(student, teacher, 2.0) != soft_loss(student, teacher)
    assert distill_loss(teacher.clone(), teacher, UNLABELLED, Loss(temperature=3.0)) < 1e-6


def test_a_student_that_matches_its_teacher_has_zero_soft_loss():
    teacher = logits(0)
    assert distill_loss(teacher.clone(), teacher, UNLABELLED) < 1e-6
    assert distill_loss(logits(1), teacher, UNLABELLED) > 0.1


def test_hard_loss_is_the_cross_entropy_to_the_teachers_top1():
    student, teacher = logits(1), logits(0)
    top1 = teacher.argmax(-1)
    by_hand = -student.log_softmax(-1)[torch.arange(6), top1].mean()
    torch.testing.assert_close(distill_loss(student, teacher, UNLABELLED, Loss("hard")), by_hand)
    # only the teacher's top-1 teaches: any teacher with the same top-1 gives the same loss
    same_top1 = F.one_hot(top1, 5).float() * 50 - 7
    torch.testing.assert_close(hard_loss(student, same_top1), hard_loss(student, teacher))
    assert hard_loss(student, -teacher) != hard_loss(student, teacher)
    # a student sure of the teacher's top-1 class has (nearly) nothing left to learn
    assert hard_loss(F.one_hot(top1, 5).float() * 50, teacher) < 1e-6


def test_both_is_the_mean_of_soft_and_hard_and_labels_add_their_cross_entropy():
    student, teacher = logits(1), logits(0)
    both = distill_loss(student, teacher, UNLABELLED, Loss("both"))
    torch.testing.assert_close(both, (soft_loss(student, teacher) + hard_loss(student, teacher)) / 2)
    labels = torch.tensor([0, 1, -1, 2, -1, 4])  # -1: unlabelled
    labelled = labels >= 0
    with_labels = distill_loss(student, teacher, labels, Loss("both", ce_weight=0.5))
    torch.testing.assert_close(with_labels, both + 0.5 * F.cross_entropy(student[labelled], labels[labelled]))
    with pytest.raises(ValueError, match="must be one of"):
        distill_loss(student, teacher, UNLABELLED, Loss("warm"))


def test_pooled_teacher_tokens_on_a_merged_grid_are_the_cell_means():
    # a 3x4 grid whose cell (r, c) holds 4r + c; "w" pairs columns (0,1), (2,3), "h" rows (0,1), row 2 stays
    grid, axes = (3, 4), ["w", "h"]
    patches = torch.arange(12.0).view(1, 12, 1) * torch.tensor([1.0, -2.0])  # (1, 12, 2): two channels
    pooled = cell_means(patches, grid, axes)
    assert grid_after(grid, axes) == (2, 2)
    want = torch.tensor([(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9) / 2, (10 + 11) / 2])
    torch.testing.assert_close(pooled, (want.view(1, 4, 1) * torch.tensor([1.0, -2.0])))
    prefix = torch.full((1, 1, 2), 7.0)  # a class token: kept as it is
    tokens = merged_tokens(torch.cat([prefix, patches], dim=1), 1, grid, axes)
    torch.testing.assert_close(tokens, torch.cat([prefix, pooled], dim=1))


def test_a_full_grid_teachers_tokens_are_averaged_onto_the_students_merged_cells():
    teacher = tiny_vit()
    student = patch_vit(copy.deepcopy(teacher), alternating_schedule([0, 1, 2], (8, 8)))  # 8x8 -> 4x4 -> 4x2
    axes = merge_axes(student)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        taught, learnt = distill_outputs(teacher, images, axes), distill_outputs(student, images, axes)
        full = teacher.forward_features(images)  # (2, 1 + 64, 48)
    assert isinstance(taught, WithTokens) and taught.tokens.shape == learnt.tokens.shape == (2, 1 + 8, 48)
    torch.testing.assert_close(taught.logits, teacher(images))
    torch.testing.assert_close(learnt.logits, student(images))
    # each merged token's target, the mean of the cells unmerge copies it back to
    owner = unmerge(torch.arange(8.0).view(1, 1, 4, 2), (8, 8), axes).flatten().long()  # (64,) merged index per cell
    for m in range(8):
        torch.testing.assert_close(taught.tokens[:, 1 + m], full[:, 1:][:, owner == m].mean(1))
    torch.testing.assert_close(taught.tokens[:, 0], full[:, 0])


def test_a_student_with_its_teachers_logits_and_tokens_has_zero_loss():
    teacher = tiny_vit()
    student = patch_vit(copy.deepcopy(teacher), [])  # merges nothing: the teacher itself
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outputs = [distill_outputs(model, images, merge_axes(student)) for model in (student, teacher)]
        assert objective(*outputs, torch.full((2,), -1), Loss(token_weight=0.5)) < 1e-5
        merged = patch_vit(copy.deepcopy(teacher), alternating_schedule([1], (8, 8)))
        apart = [distill_outputs(model, images, merge_axes(merged)) for model in (merged, teacher)]
        tokens_only = objective(*apart, torch.full((2,), -1), Loss(token_weight=1.0)) - objective(
            *apart, torch.full((2,), -1), Loss(token_weight=0.0))
    assert tokens_only > 1e-4  # merged tokens are not the cell means: a signal to learn


def test_the_reference_convnet_teaches_the_reference_vit():
    reference = load_model(str(EXAMPLES / "reference")).model
    convnet = load_model(str(EXAMPLES / "reference_training" / "teacher.safetensors"), require_vit=False).model
    check_teacher(convnet, reference, "the convnet", CPU)  # 10 classes, the same label names
    assert convnet(torch.zeros(2, 3, 56, 56)).shape == (2, 10)
    with pytest.raises(CaitError, match="no such tokens"):
        check_token_teacher(convnet, reference, "the convnet")


def test_a_teacher_that_names_its_classes_otherwise_is_refused():
    student, teacher = tiny_vit(num_classes=3), tiny_vit(num_classes=3)
    student.pretrained_cfg = {**student.pretrained_cfg, "label_names": ["cat", "dog", "fox"]}
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, "label_names": ["cat", "fox", "dog"]}
    with pytest.raises(CaitError, match=r"class 1: 'fox', the model's 'dog'"):
        check_teacher(teacher, student, "t", CPU)
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, "label_names": ["cat", "dog", "fox"]}
    check_teacher(teacher, student, "t", CPU)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(1)
    other = {"same": tiny_vit(**ARGS), "classes5": tiny_vit(**{**ARGS, "num_classes": 5}),
             "headless": tiny_vit(**{**ARGS, "num_classes": 0}), "wide": tiny_vit(**{**ARGS, "embed_dim": 24})}
    torch.manual_seed(2)  # the teacher of the same label space: other weights than the model's
    with torch.no_grad():
        for p in other["same"].parameters():
            p.add_(0.02 * torch.randn_like(p))
    return {"model": str(save_tiny_timm_dir(root / "model", tiny_vit(**ARGS), ARGS)),
            **{name: str(save_tiny_timm_dir(root / name, model, {**ARGS, "num_classes": model.num_classes,
                                                                   "embed_dim": model.embed_dim}))
               for name, model in other.items()},
            "data": str(make_image_folder(root / "data", classes=3, per_class=6)), "cache": root / "latency"}


@pytest.fixture(autouse=True)
def synthetic_latency(monkeypatch):
    """Plan on a synthetic latency table (these tests are about training, not this machine's load)."""
    monkeypatch.setattr("cait_cli.pipeline.compress.calibrate_latency", lambda model, *a, **k: synthetic_table(model))


def compress_cli(assets, out, *options):
    args = ["compress", assets["model"], "--target-speedup", "1.2", "--data", assets["data"], "--out", str(out),
            "--calib-steps", "2", "--finetune-steps", "2", "--batch-size", "4", "--bench-batch-size", "8",
            "--workers", "0", "--device", "cpu", "--no-replan", *map(str, options)]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


@pytest.mark.parametrize("teacher,options,message", [
    ("classes5", [], "predicts 5 classes, the model 3: a teacher must share the model's label space"),
    ("headless", [], "is headless"),
    ("wide", ["--token-distill", "0.5"], r"--token-distill needs a teacher .*width 48\); .* width 24"),
    (None, ["--distill", "warm"], "--distill must be one of soft, hard, both"),
    (None, ["--token-distill", "-1"], "--token-distill must be 0"),
    (None, ["--temperature", "0"], "--temperature must be above 0"),
    (None, ["--merge-lr", "0"], "--merge-lr must be above 0"),
    (None, ["--score-lr", "-0.1"], "--score-lr must be above 0"),
    ("missing", [], "--teacher: unknown model"),
])
def test_a_teacher_that_cannot_teach_is_one_line_and_nothing_is_written(assets, tmp_path, teacher, options,
                                                                         message):
    given = [] if teacher is None else ["--teacher", assets.get(teacher, str(tmp_path / teacher))]
    code, output = compress_cli(assets, tmp_path / "o.cait", *given, *options)
    assert code == 1, output
    lines = output.strip().splitlines()
    assert re.search(message, output) and lines[-1].startswith("error:"), output
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in output
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no run folder


def test_compress_with_another_teacher_and_token_distillation_names_both(assets, tmp_path):
    # --max-keep 0.8: the plan prunes, so both phases train; --schedule continuous: one stream across them
    code, output = compress_cli(assets, tmp_path / "o.cait", "--teacher", assets["same"], "--distill", "both",
                                "--token-distill", "0.5", "--json", tmp_path / "r.json", "--max-keep", "0.8",
                                "--schedule", "continuous", "--temperature", "2")
    assert code in (0, 3), output  # 3: the measured speed missed the target (this machine's load, not the test)
    training = json.loads((tmp_path / "o.cait" / "report.json").read_text())["training"]
    assert training["teacher"] == assets["same"] and training["distill"] == "both"
    assert training["token_distill"] == 0.5 and training["loss"] == "kl_logits+ce_teacher_top1"
    assert training["temperature"] == 2.0
    assert training["score_lr"] == 2e-2 and training["merge_lr"] == training["lr"]  # the defaults, recorded
    assert set(training["steps"]) == {"calibrate", "finetune"} and training["schedule"] == "continuous"
    assert json.loads((tmp_path / "r.json").read_text())["training"] == training
    said = " ".join(output.split())  # the terminal wraps long lines
    assert f"distilled from {assets['same']}: soft and hard" in said and "tokens x 0.5" in said
    # the temperature softens the KL half only, and the line says so
    assert "(the mean of KL to its probabilities at temperature 2 and cross-entropy to its top-1 class)" in said
    assert "one stream of batches (none seen twice)" in said
    config = json.loads((tmp_path / "o.cait" / "config.json").read_text())
    report = CompressReport.from_json(json.loads((tmp_path / "o.cait" / "report.json").read_text()))
    assert f"distillation from `{assets['same']}`" in " ".join(model_card(config, report, "org/o").split())


def test_the_report_names_the_temperature_in_the_soft_half_only():
    from cait_cli.interface.report import distill_words
    assert distill_words("soft", 2.0) == "soft (KL to its probabilities at temperature 2)"
    assert distill_words("hard", 2.0) == "hard (cross-entropy to its top-1 class)"
    assert distill_words("both", 1.0) == ("soft and hard (the mean of KL to its probabilities and cross-entropy "
                                          "to its top-1 class)")
