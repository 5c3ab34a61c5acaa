"""The standard OVSS benchmarks, read from their usual on-disk layouts into lazy ``datasets`` objects.

Each dataset is a [`DatasetSpec`]: where images and masks live under ``--data-root``, how mask values map
to class ids (255 = ignore), and the class-name list with the synonyms the training-free anchors use
(``classes/<name>.txt``: one class per line, synonyms comma-separated). Masks are always read as indices
(``np.array(Image.open(path))``), never converted to "L" or RGB, which would corrupt palette PNGs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
CLASSES_DIR = Path(__file__).resolve().parent / "classes"
SPLITS_DIR = Path(__file__).resolve().parent / "splits"

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

#: COCO-Object's class names (wangf3014/SCLIP@b56bd30:custom_datasets.py:51-59): background + 80 things.
COCO_OBJECT_NAMES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

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
    split_file: optional list of ids (one per line) under the data root (or shipped in this package,
        ``packaged_split``); otherwise every image is used, recursively, sorted.
    mask_mapping: "identity", "reduce_zero_label" or "cityscapes" (labelIds -> train ids).
    background_index: the class that thresholded pixels fall to, if the dataset has one.
    classes: the default class-name file (``<anchor>/<file>`` under ``classes/``); a protocol may use another.
    """

    name: str
    images: str
    masks: str
    image_suffix: str
    mask_suffix: str
    num_classes: int
    classes: str
    mask_mapping: str = "identity"
    split_file: str | None = None
    packaged_split: bool = False
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
        """One line per class of the default class file: the names to embed (synonyms comma-separated)."""
        return read_class_file(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Display name of each class id (the first synonym unless the dataset has official names)."""
        if self.display_names is not None:
            return list(self.display_names)
        return [line.split(",")[0].strip() for line in self.prompts]


def read_class_file(relative: str) -> list[str]:
    """The lines of a shipped class file (``<anchor>/cls_<name>.txt``, byte-identical to the anchor's): one
    class per line, synonyms separated by commas. The anchors read every line (``readlines``), so an empty
    line would be a class; none of the shipped files has one, and an empty line is an error here."""
    path = CLASSES_DIR / relative
    lines = path.read_text(encoding="utf-8").splitlines()
    if any(not line.strip() for line in lines):
        raise ValueError(f"{path} has an empty line; every line must name a class")
    return [line.strip() for line in lines]


def _natural(name, images, masks, image_suffix, mask_suffix, num_classes, classes, **kw) -> DatasetSpec:
    return DatasetSpec(name, images, masks, image_suffix, mask_suffix, num_classes, f"sclip/{classes}", **kw)


def _remote(name, images, masks, image_suffix, mask_suffix, num_classes, classes, **kw) -> DatasetSpec:
    return DatasetSpec(
        name, images, masks, image_suffix, mask_suffix, num_classes, f"segearth/{classes}", domain="remote sensing",
        **kw,
    )  # fmt: skip


#: The benchmarks. Natural images default to SCLIP's class files, remote sensing to SegEarth-OV's; layouts
#: follow the anchors' configs (``data_prefix``, suffixes from their dataset classes). The data root is the
#: folder that holds the paths below (for SegEarth-OV's ``data/<Name>/...`` prefixes: ``data/<Name>``).
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        _natural(
            "voc21", "JPEGImages", "SegmentationClass", ".jpg", ".png", 21, "cls_voc21.txt",
            split_file="ImageSets/Segmentation/val.txt", background_index=0, display_names=VOC_NAMES,
            notes="VOC2012 val; class 0 = background, prompted with stuff words",
        ),
        _natural(
            "voc20", "JPEGImages", "SegmentationClass", ".jpg", ".png", 20, "cls_voc20.txt",
            mask_mapping="reduce_zero_label", split_file="ImageSets/Segmentation/val.txt",
            display_names=VOC_NAMES[1:], notes="VOC2012 val without background (background ignored)",
        ),
        _natural(
            "context60", "JPEGImages", "SegmentationClassContext", ".jpg", ".png", 60, "cls_context60.txt",
            split_file="ImageSets/SegmentationContext/val.txt", background_index=0,
            notes="PASCAL Context (VOC2010) val, 59 classes + background",
        ),
        _natural(
            "context59", "JPEGImages", "SegmentationClassContext", ".jpg", ".png", 59, "cls_context59.txt",
            mask_mapping="reduce_zero_label", split_file="ImageSets/SegmentationContext/val.txt",
            notes="PASCAL Context val, background ignored",
        ),
        _natural(
            "coco_object", "images/val2017", "annotations/val2017", ".jpg", "_instanceTrainIds.png", 81,
            "cls_coco_object.txt", background_index=0, display_names=COCO_OBJECT_NAMES,
            notes="COCO val2017, 80 things + background",
        ),
        _natural(
            "coco_stuff164k", "images/val2017", "annotations/val2017", ".jpg", "_labelTrainIds.png", 171,
            "cls_coco_stuff.txt", notes="COCO-Stuff 164k val2017, 171 classes",
        ),
        _natural(
            "coco_stuff10k", "images/test2014", "annotations/test2014", ".jpg", "_labelTrainIds.png", 171,
            "cls_coco_stuff.txt", mask_mapping="reduce_zero_label",
            notes="COCO-Stuff 10k test (mmseg converter: train ids 1..171, 0 = unlabelled, ignored)",
        ),
        _natural(
            "cityscapes", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png", "_gtFine_labelIds.png", 19,
            "cls_city_scapes.txt", mask_mapping="cityscapes",
            notes="Cityscapes val, labelIds mapped to the 19 train ids",
        ),
        _natural(
            "ade20k", "images/validation", "annotations/validation", ".jpg", ".png", 150, "cls_ade20k.txt",
            mask_mapping="reduce_zero_label", notes="ADEChallengeData2016 val, 0 = other (ignored)",
        ),
        _remote(
            "openearthmap", "img_dir/val", "ann_dir/val", ".tif", ".tif", 9, "cls_openearthmap.txt",
            background_index=0, notes="OpenEarthMap val (SegEarth-OV layout)",
        ),
        _remote(
            "loveda", "img_dir/val", "ann_dir/val", ".png", ".png", 7, "cls_loveda.txt",
            mask_mapping="reduce_zero_label", background_index=0, notes="LoveDA val; 0 = no data (ignored)",
        ),
        _remote(
            "isaid", "img_dir/val", "ann_dir/val", ".png", "_instance_color_RGB.png", 16, "cls_iSAID.txt",
            background_index=0, notes="iSAID val patches (mmseg converter)",
        ),
        _remote(
            "potsdam", "img_dir/val", "ann_dir/val", ".png", ".png", 6, "cls_potsdam.txt",
            mask_mapping="reduce_zero_label", background_index=5, notes="ISPRS Potsdam (mmseg converter)",
        ),
        _remote(
            "vaihingen", "img_dir/val", "ann_dir/val", ".png", ".png", 6, "cls_vaihingen.txt",
            mask_mapping="reduce_zero_label", background_index=5, notes="ISPRS Vaihingen (mmseg converter)",
        ),
        _remote(
            "uavid", "img_dir/test", "ann_dir/test", ".png", ".png", 7, "cls_uavid.txt", background_index=0,
            notes="UAVid (SegEarth-OV layout)",
        ),
        _remote(
            "udd5", "val/src", "val/gt", ".JPG", ".png", 5, "cls_udd5.txt", background_index=4,
            notes="UDD5 val (data root: the UDD5 folder)",
        ),
        _remote(
            "vdd", "test/src", "test/gt", ".JPG", ".png", 7, "cls_vdd.txt", background_index=0,
            notes="VDD test (data root: the VDD folder)",
        ),
        # Building, road and water extraction (SegEarth-OV configs/cfg_*.py, labels converted to 0/1 by its
        # tools/dataset_converters, suffixes from custom_datasets.py).
        _remote(
            "inria", "AerialImageDataset/train/img_dir/split_test", "AerialImageDataset/train/ann_dir/split_test",
            ".png", ".png", 2, "cls_inria.txt", background_index=0, notes="Inria aerial (data root: data/Inria)",
        ),
        _remote(
            "whu_aerial", "val/image", "val/label_cvt", ".png", ".png", 2, "cls_whu.txt", background_index=0,
            notes="WHU building, aerial (data root: data/WHU-BD)",
        ),
        _remote(
            "whu_sat_ii", "Satellite_dataset_\u2161_East_Asia/1.cropped/test/image",
            "Satellite_dataset_\u2161_East_Asia/1.cropped/test/label_cvt", ".tif", ".tif", 2, "cls_whu.txt",
            background_index=0, notes="WHU building, satellite II (data root: data/WHU_Sat_II)",
        ),
        _remote(
            "xbd", "test/images_pre", "test/targets_cvt_pre", ".png", ".png", 2, "cls_xBD.txt", background_index=0,
            notes="xBD pre-disaster buildings (data root: data/xBD)",
        ),
        _remote(
            "wbs_si", "WaterBodiesDatasetPreprocessed/WaterBodiesDatasetPreprocessed/Images",
            "WaterBodiesDatasetPreprocessed/WaterBodiesDatasetPreprocessed/Masks_cvt", ".jpg", ".jpg", 2,
            "cls_wbs-si.txt", split_file="wbs-si_val.txt", packaged_split=True, background_index=0,
            notes="Water bodies in satellite images (data root: data/water-body-segmentation-in-satellite-images)",
        ),
        _remote(
            "deepglobe_road", "DeepGlobe_test_1530/image_cvt", "DeepGlobe_test_1530/label_cvt", ".jpg", ".png", 2,
            "cls_roadval.txt", background_index=0, notes="DeepGlobe roads (data root: data/GlobalRoadSet_Val)",
        ),
        _remote(
            "chn6_cug", "val/image_cvt", "val/label_cvt", ".jpg", ".png", 2, "cls_chn6-cug.txt", background_index=0,
            notes="CHN6-CUG roads (data root: data/CHN6-CUG)",
        ),
        _remote(
            "massachusetts_road", "Massachusetts_test_49/img", "Massachusetts_test_49/label_cvt", ".jpg", ".png", 2,
            "cls_roadval.txt", background_index=0, notes="Massachusetts roads (data root: data/GlobalRoadSet_Val)",
        ),
        _remote(
            "spacenet_road", "SpaceNet_test_567/img", "SpaceNet_test_567/label_cvt", ".jpg", ".png", 2,
            "cls_roadval.txt", background_index=0, notes="SpaceNet roads (data root: data/GlobalRoadSet_Val)",
        ),
    ]
}  # fmt: skip


@dataclass
class BenchmarkDataset:
    """A loaded benchmark. ``dataset`` is a lazy ``datasets.Dataset`` of ``{"image": PIL RGB, "mask": np.uint8
    [H, W], "id": str}`` (files are read when an item is accessed); ``spec`` says how to prompt and score it.
    The wrapper itself indexes, iterates and has a length like the dataset: ``bench[0]["mask"]``."""

    spec: DatasetSpec
    dataset: Any
    root: Path

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.dataset)


def _split_path(spec: DatasetSpec, root: Path) -> Path | None:
    if spec.split_file is None:
        return None
    return SPLITS_DIR / spec.split_file if spec.packaged_split else root / spec.split_file


def _layout_error(spec: DatasetSpec, root: Path, problem: str) -> ValueError:
    expected = [f"{root}/{spec.images}/*{spec.image_suffix}", f"{root}/{spec.masks}/*{spec.mask_suffix}"]
    if spec.split_file and not spec.packaged_split:
        expected.append(f"{root}/{spec.split_file}")
    return ValueError(f"{spec.name}: {problem}; expected the layout " + ", ".join(expected))


def sample_files(spec: DatasetSpec, root: str | Path) -> list[tuple[str, Path, Path]]:
    """``(id, image, mask)`` for every sample of ``spec`` under ``root``, checking the layout. Without a split
    file, every image under the image folder (recursively, sorted), as mmseg's ``BaseSegDataset`` lists them."""
    root = Path(root)
    images, masks = root / spec.images, root / spec.masks
    for folder in (images, masks):
        if not folder.is_dir():
            raise _layout_error(spec, root, f"folder {folder} not found")
    split = _split_path(spec, root)
    if split is not None:
        if not split.is_file():
            raise _layout_error(spec, root, f"split file {split} not found")
        ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        pairs = [(i, images / f"{i}{spec.image_suffix}", masks / f"{i}{spec.mask_suffix}") for i in ids]
    else:
        pairs = []
        for image in sorted(images.glob(f"**/*{spec.image_suffix}")):
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


@dataclass
class FileSamples:
    """The lazy sample sequence used where ``datasets`` is not installed (e.g. a bare GPU machine): the same
    ``{"id", "image", "mask"}`` items, read when accessed."""

    spec: DatasetSpec
    pairs: list[tuple[str, Path, Path]]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..image_processing_ovseg import load_image

        sample, image, mask = self.pairs[index]
        return {"id": sample, "image": load_image(str(image)), "mask": read_mask(mask, self.spec)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


def load_benchmark(name: str, data_root: str | Path, limit: int | None = None) -> BenchmarkDataset:
    """A benchmark: a [`BenchmarkDataset`] around a lazy ``datasets.Dataset`` of ``{"image", "mask", "id"}``
    (``bench[0]``, ``len(bench)``, ``bench.dataset`` for the ``datasets`` API); see [`DatasetSpec`]. Without
    ``datasets`` installed, ``bench.dataset`` is a plain lazy [`FileSamples`] with the same items."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of images, got {limit!r}")
    spec = DATASETS[name]
    pairs = sample_files(spec, data_root)
    if limit is not None:
        pairs = pairs[:limit]
    try:
        import datasets
    except ImportError:
        return BenchmarkDataset(spec, FileSamples(spec, pairs), Path(data_root))
    table = datasets.Dataset.from_dict(
        {"id": [i for i, _, _ in pairs], "image": [str(p) for _, p, _ in pairs], "mask": [str(p) for _, _, p in pairs]}
    )

    def decode(batch: dict[str, list]) -> dict[str, list]:
        from ..image_processing_ovseg import load_image

        return {
            "id": batch["id"],
            "image": [load_image(path) for path in batch["image"]],
            "mask": [read_mask(path, spec) for path in batch["mask"]],
        }

    return BenchmarkDataset(spec, table.with_transform(decode), Path(data_root))
