"""A prepared dataset folder: <name>/{<split>.beton, meta.json}, read and validated (and <split>.pixels, a stored
mix's decoded pixels, once pixel_bank.py has written it)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .fingerprint import beton_problem

DATASET_FORMAT = "labelopt.dataset"
# Side of the square that variable-size (JPEG) images are decoded to for training,
# and the evaluation centre crop: the usual ImageNet 256 / 224 pair. --resolution R keeps their ratio: models of
# R pixels train from decodes of R * 256/224 and are evaluated on an R-pixel centre crop of one (128: 146 / 128).
TRAIN_DECODE_SIDE = 256
EVAL_SIDE = 224


@dataclass
class PreparedDataset:
    path: Path
    meta: dict
    resolution: int | None = None  # JPEG datasets: the side models see (--resolution); None: EVAL_SIDE

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def mean(self) -> list[float]:
        return self.meta["mean"]

    @property
    def std(self) -> list[float]:
        return self.meta["std"]

    @property
    def fixed_size(self) -> bool:
        return self.meta.get("image_shape") is not None

    @property
    def input_size(self) -> int:
        """Side of the square images models see."""
        return int(self.meta["image_shape"][0]) if self.fixed_size else self.resolution or EVAL_SIDE

    @property
    def decode_side(self) -> int:
        """Side of the square a training image is decoded to, before its crop (input_size for fixed-size data)."""
        return self.input_size if self.fixed_size else round(self.input_size * TRAIN_DECODE_SIDE / EVAL_SIDE)

    def at_resolution(self, side: int | None) -> PreparedDataset:
        """The dataset as models see it at `side` pixels (--resolution); None: as prepared."""
        if side is None or (self.fixed_size and side == self.input_size):
            return self
        if self.fixed_size:
            raise UserError(f"--resolution {side}: {self.name}'s images are {self.input_size} pixels, fixed when it "
                            f"was prepared; --resolution applies to datasets of JPEG images (imagenet)")
        return dataclasses.replace(self, resolution=int(side))

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def split_meta(self, split: str) -> dict:
        if split not in self.meta["splits"]:
            raise UserError(f"{self.path} has no split '{split}'; it has: {', '.join(self.splits)}")
        return self.meta["splits"][split]

    def beton(self, split: str) -> Path:
        """The split's .beton, once it is the file the split was prepared as (fingerprint.beton_problem: its sample
        count and size on every open, its sha256 once after its time changed)."""
        path = self.path / self.split_meta(split)["file"]
        if not path.is_file():
            raise UserError(f"{path} is missing; prepare the dataset again with labelopt prepare --overwrite")
        problem = beton_problem(path, self.split_meta(split))
        if problem:
            raise UserError(f"{path} {problem}: it is not the file this dataset was prepared as (replaced, or "
                            f"damaged), so its images are not the ones meta.json's fingerprint names; prepare the "
                            f"dataset again with labelopt prepare --overwrite")
        return path

    def num_samples(self, split: str) -> int:
        return int(self.split_meta(split)["num_samples"])

    def labels(self, split: str):
        """int64 numpy [N]: the class of every sample, by index, read from the .beton's metadata (no decoding)."""
        import numpy as np

        from .beton_table import read_beton_table

        samples = read_beton_table(self.beton(split)).samples
        labels = np.full(self.num_samples(split), -1, dtype=np.int64)
        labels[samples["index"]] = samples["label"]
        return labels

    def fingerprint(self, split: str) -> str:
        """The split's fingerprint, once its .beton is proved the file it was computed with: what a store made,
        verified or joined to this data, and a run, record."""
        self.beton(split)
        return self.split_meta(split)["fingerprint"]

    def identity(self, split: str) -> dict:
        """What a run or a store records about the data it was made from."""
        return {
            "name": self.name,
            "split": split,
            "num_samples": self.num_samples(split),
            "num_classes": self.num_classes,
            "fingerprint": self.fingerprint(split),
        }


def open_dataset(path: str | Path) -> PreparedDataset:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        hint = ""
        if path.is_dir():
            inner = sorted(p.parent.name for p in path.glob("*/meta.json"))
            if inner:
                hint = f" (did you mean {path / inner[0]}?)"
        raise UserError(
            f"{path} is not a prepared dataset (no meta.json){hint}; "
            f"run labelopt prepare --dataset NAME --out DIR and pass --data DIR/NAME"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_path} is unreadable ({exc}); prepare the dataset again with --overwrite") from None
    if meta.get("format") != DATASET_FORMAT:
        raise UserError(f"{meta_path} is not a labelopt dataset description; prepare the dataset again")
    return PreparedDataset(path, meta)
