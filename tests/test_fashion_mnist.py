"""Fashion-MNIST for the examples and benchmarks: the IDX reader, the committed subset, the subset script."""
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import idx_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is not installed with cait_cli
from benchmarks.fashion_mnist import (  # noqa: E402
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
    read_idx,
)
from cait_cli.errors import CaitError  # noqa: E402

FASHION = DEBIAN_FASHION_MNIST
EXAMPLES = ROOT / "examples" / "fashion_mnist"


def test_idx_round_trip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), array)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), array)


def test_idx_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(CaitError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((4, 4)))[:-3])
    with pytest.raises(CaitError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(CaitError, match="cannot read"):
        read_idx(tmp_path / "missing.gz")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_files():
    images, labels = load_fashion_mnist(FASHION, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(labels).tolist()) == list(range(10))


def test_committed_subset_is_stratified():
    for split, count in (("train", 150), ("val", 50)):
        folders = sorted(p.name for p in (EXAMPLES / split).iterdir())
        assert folders == sorted(FASHION_MNIST_CLASSES)
        assert all(len(list((EXAMPLES / split / name).glob("*.png"))) == count for name in folders)


def test_subset_script_refuses_a_missing_dataset_in_one_line(tmp_path):
    script = ROOT / "examples" / "make_fashion_subset.py"  # run as documented, from the repo root
    done = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--root", str(tmp_path / "none"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot read") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
