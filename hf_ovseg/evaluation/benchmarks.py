"""The standard OVSS benchmarks, read from their usual on-disk layouts into lazy ``datasets`` objects.

Each dataset is a [`DatasetSpec`]: where images and masks live under ``--data-root``, how mask values map
to class ids (255 = ignore), and the class-name list with the synonyms the training-free anchors use
(``classes/<name>.txt``: one class per line, synonyms comma-separated). Masks are always read as indices
(``np.array(Image.open(path))``), never converted to "L" or RGB, which would corrupt palette PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
CLASSES_DIR = Path(__file__).resolve().parent / "classes"

VOC_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: Cityscapes labelIds -> the 19 train ids (everything else ignored).
CITYSCAPES_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


def identity_lut() -> np.ndarray:
    return np.arange(256, dtype=np.uint8)


def reduce_zero_label_lut() -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 (unlabelled/other) -> 255, k -> k - 1, 255 stays 255."""
    lut = (np.arange(256) - 1).clip(0, 255).astype(np.uint8)
    lut[0] = lut[255] = IGNORE_INDEX
    return lut


def cityscapes_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


@dataclass(frozen=True)
class DatasetSpec:
    """Where a benchmark's files are and how to read them.

    images/masks: folders under the data root; ``*_suffix`` join a sample id to its file name.
    split_file: optional list of ids (one per line) under the data root; otherwise every image is used.
    recursive: look for images in subfolders too (Cityscapes' per-city folders).
    mask_mapping: "identity", "reduce_zero_label" or "cityscapes" (labelIds -> train ids).
    background_index: the class that thresholded pixels fall to, if the dataset has one.
    """

    name: str
    images: str
    masks: str
    image_suffix: str
    mask_suffix: str
    num_classes: int
    mask_mapping: str = "identity"
    split_file: str | None = None
    recursive: bool = False
    background_index: int | None = None
    display_names: tuple[str, ...] | None = None
    domain: str = "natural"
    notes: str = ""
    lut: np.ndarray = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        luts = {"identity": identity_lut, "reduce_zero_label": reduce_zero_label_lut, "cityscapes": cityscapes_lut}
        object.__setattr__(self, "lut", luts[self.mask_mapping]())

    @property
    def prompts(self) -> list[str]:
        """One line per class: the names to embed (synonyms comma-separated)."""
        lines = (CLASSES_DIR / f"{self.name}.txt").read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]

    @property
    def class_names(self) -> list[str]:
        """Display name of each class id (the first synonym unless the dataset has official names)."""
        if self.display_names is not None:
            return list(self.display_names)
        return [line.split(",")[0].strip() for line in self.prompts]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "voc21",
            "JPEGImages",
            "SegmentationClass",
            ".jpg",
            ".png",
            21,
            split_file="ImageSets/Segmentation/val.txt",
            background_index=0,
            display_names=VOC_NAMES,
            notes="VOC2012 val; class 0 = background, prompted with 26 stuff words",
        ),
        DatasetSpec(
            "voc20",
            "JPEGImages",
            "SegmentationClass",
            ".jpg",
            ".png",
            20,
            "reduce_zero_label",
            split_file="ImageSets/Segmentation/val.txt",
            display_names=VOC_NAMES[1:],
            notes="VOC2012 val without background (background ignored)",
        ),
        DatasetSpec(
            "context60",
            "JPEGImages",
            "SegmentationClassContext",
            ".jpg",
            ".png",
            60,
            split_file="ImageSets/SegmentationContext/val.txt",
            background_index=0,
            notes="PASCAL Context (VOC2010) val, 59 classes + background",
        ),
        DatasetSpec(
            "context59",
            "JPEGImages",
            "SegmentationClassContext",
            ".jpg",
            ".png",
            59,
            "reduce_zero_label",
            split_file="ImageSets/SegmentationContext/val.txt",
            notes="PASCAL Context val, background ignored",
        ),
        DatasetSpec(
            "coco_object",
            "images/val2017",
            "annotations/val2017",
            ".jpg",
            "_instanceTrainIds.png",
            81,
            background_index=0,
            notes="COCO val2017, 80 things + background",
        ),
        DatasetSpec(
            "coco_stuff164k",
            "images/val2017",
            "annotations/val2017",
            ".jpg",
            "_labelTrainIds.png",
            171,
            notes="COCO-Stuff 164k val2017, 171 classes",
        ),
        DatasetSpec(
            "cityscapes",
            "leftImg8bit/val",
            "gtFine/val",
            "_leftImg8bit.png",
            "_gtFine_labelIds.png",
            19,
            "cityscapes",
            recursive=True,
            notes="Cityscapes val, labelIds mapped to the 19 train ids",
        ),
        DatasetSpec(
            "ade20k",
            "images/validation",
            "annotations/validation",
            ".jpg",
            ".png",
            150,
            "reduce_zero_label",
            notes="ADEChallengeData2016 val, 0 = other (ignored)",
        ),
        DatasetSpec(
            "openearthmap",
            "img_dir/val",
            "ann_dir/val",
            ".tif",
            ".tif",
            9,
            background_index=0,
            domain="remote sensing",
            notes="OpenEarthMap val (SegEarth-OV layout)",
        ),
        DatasetSpec(
            "loveda",
            "img_dir/val",
            "ann_dir/val",
            ".png",
            ".png",
            7,
            "reduce_zero_label",
            background_index=0,
            domain="remote sensing",
            notes="LoveDA val; 0 = no data (ignored)",
        ),
        DatasetSpec(
            "isaid",
            "img_dir/val",
            "ann_dir/val",
            ".png",
            "_instance_color_RGB.png",
            16,
            background_index=0,
            domain="remote sensing",
            notes="iSAID val patches (mmseg converter)",
        ),
        DatasetSpec(
            "potsdam",
            "img_dir/val",
            "ann_dir/val",
            ".png",
            ".png",
            6,
            "reduce_zero_label",
            background_index=5,
            domain="remote sensing",
            notes="ISPRS Potsdam (mmseg converter)",
        ),
        DatasetSpec(
            "vaihingen",
            "img_dir/val",
            "ann_dir/val",
            ".png",
            ".png",
            6,
            "reduce_zero_label",
            background_index=5,
            domain="remote sensing",
            notes="ISPRS Vaihingen (mmseg converter)",
        ),
        DatasetSpec(
            "uavid",
            "img_dir/test",
            "ann_dir/test",
            ".png",
            ".png",
            7,
            background_index=0,
            domain="remote sensing",
            notes="UAVid (SegEarth-OV layout)",
        ),
        DatasetSpec(
            "udd5",
            "val/src",
            "val/gt",
            ".JPG",
            ".png",
            5,
            background_index=4,
            domain="remote sensing",
            notes="UDD5 val (data root: the UDD5 folder)",
        ),
        DatasetSpec(
            "vdd",
            "test/src",
            "test/gt",
            ".JPG",
            ".png",
            7,
            background_index=0,
            domain="remote sensing",
            notes="VDD test (data root: the VDD folder)",
        ),
    ]
}


@dataclass
class BenchmarkDataset:
    """A loaded benchmark: ``dataset`` yields ``{"image": PIL RGB, "mask": np.uint8 [H, W], "id": str}``
    lazily (files are read when an item is accessed); ``spec`` says how to prompt and score it."""

    spec: DatasetSpec
    dataset: Any
    root: Path

    def __len__(self) -> int:
        return len(self.dataset)


def _layout_error(spec: DatasetSpec, root: Path, problem: str) -> ValueError:
    expected = [f"{root}/{spec.images}/*{spec.image_suffix}", f"{root}/{spec.masks}/*{spec.mask_suffix}"]
    if spec.split_file:
        expected.append(f"{root}/{spec.split_file}")
    return ValueError(f"{spec.name}: {problem}; expected the layout " + ", ".join(expected))


def sample_files(spec: DatasetSpec, root: str | Path) -> list[tuple[str, Path, Path]]:
    """``(id, image, mask)`` for every sample of ``spec`` under ``root``, checking the layout."""
    root = Path(root)
    images, masks = root / spec.images, root / spec.masks
    for folder in (images, masks):
        if not folder.is_dir():
            raise _layout_error(spec, root, f"folder {folder} not found")
    if spec.split_file:
        split = root / spec.split_file
        if not split.is_file():
            raise _layout_error(spec, root, f"split file {split} not found")
        ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        pairs = [(i, images / f"{i}{spec.image_suffix}", masks / f"{i}{spec.mask_suffix}") for i in ids]
    else:
        pattern = f"**/*{spec.image_suffix}" if spec.recursive else f"*{spec.image_suffix}"
        pairs = []
        for image in sorted(images.glob(pattern)):
            relative = image.relative_to(images).as_posix()[: -len(spec.image_suffix)]
            pairs.append((relative, image, masks / f"{relative}{spec.mask_suffix}"))
    if not pairs:
        raise _layout_error(spec, root, f"no images found in {images}")
    missing = [str(p) for _, image, mask in pairs for p in (image, mask) if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise _layout_error(spec, root, f"missing files: {', '.join(missing[:3])}{more}")
    return pairs


def read_mask(path: str | Path, spec: DatasetSpec) -> np.ndarray:
    """Class ids [H, W] uint8 of a mask file (255 = ignore), read as indices and mapped by the spec."""
    with Image.open(path) as mask:
        values = np.array(mask)
    if values.ndim != 2:
        raise ValueError(f"{path}: mask has shape {values.shape}; expected a single-channel label-id image")
    if values.dtype != np.uint8:
        if values.max(initial=0) > 255:
            raise ValueError(f"{path}: mask values exceed 255; expected 8-bit label ids")
        values = values.astype(np.uint8)
    return spec.lut[values]


def load_benchmark(name: str, data_root: str | Path, limit: int | None = None) -> BenchmarkDataset:
    """A benchmark as a lazy ``datasets.Dataset`` of ``{"image", "mask", "id"}``; see [`DatasetSpec`]."""
    import datasets

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    pairs = sample_files(spec, data_root)
    if limit is not None:
        pairs = pairs[:limit]
    table = datasets.Dataset.from_dict(
        {"id": [i for i, _, _ in pairs], "image": [str(p) for _, p, _ in pairs], "mask": [str(p) for _, _, p in pairs]}
    )

    def decode(batch: dict[str, list]) -> dict[str, list]:
        from ..processing_ovseg import load_image

        return {
            "id": batch["id"],
            "image": [load_image(path) for path in batch["image"]],
            "mask": [read_mask(path, spec) for path in batch["mask"]],
        }

    return BenchmarkDataset(spec, table.with_transform(decode), Path(data_root))
