"""A tiny random timm ViT in a local model folder (timm's layout) and a few images in an ImageFolder,
for one short `cait compress` from the installed wheel. Uses only what the wheel installs."""
import json
import sys
from pathlib import Path

import numpy as np
import timm
from PIL import Image
from safetensors.torch import save_file

ARGS = {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}


def main(root: Path) -> None:
    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, **ARGS)
    folder = root / "tiny_vit"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 3, "model_args": ARGS,
              "pretrained_cfg": {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3,
                                 "crop_pct": 1.0, "interpolation": "bilinear"}}
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in range(3):
            images = root / "images" / split / f"class_{label}"
            images.mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(images / f"{i}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
