"""``hf-ovseg``: segment images from the command line (more subcommands: see ``hf-ovseg --help``)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .api import DEFAULT_MODEL, DTYPES, resolve_device, resolve_dtype
from .configuration_ovseg import METHOD_PRESETS

logger = logging.getLogger("hf_ovseg")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def read_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """Classes from ``--labels "a,b,c"`` (one class per comma) or ``--labels-file`` (one class per line,
    synonyms comma-separated)."""
    from .processing_ovseg import parse_labels

    if (labels is None) == (labels_file is None):
        raise CLIError("give the classes with exactly one of --labels or --labels-file")
    if labels_file is not None:
        path = Path(labels_file)
        if not path.is_file():
            raise CLIError(f"labels file not found: {labels_file}")
        items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        items = [item.strip() for item in labels.split(",")]
    try:
        parse_labels(items)  # empty or duplicate classes fail here, before any work
    except ValueError as error:
        raise CLIError(str(error)) from None
    return items


#: Pipeline arguments used when neither a flag nor a --protocol gives a value.
DEFAULT_PROTOCOL = {
    "short_side": 448,
    "long_side": 2048,
    "crop_size": 224,
    "stride": 112,
    "patch_padding": "center",
    "batch_size": 8,
    "background_threshold": 0.0,
}
#: The flags that override a protocol's (or the default) value, by pipeline argument.
OVERRIDE_FLAGS = (
    "short_side", "long_side", "crop_size", "stride", "patch_padding", "batch_size", "background_threshold",
    "area_threshold", "refine",
)  # fmt: skip


def pixels_or_none(text: str) -> int | None:
    """argparse type: a positive number of pixels, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'none', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'none', got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = pixels_or_none(text)
    if value is None:
        raise argparse.ArgumentTypeError("expected a positive integer, got 'none'")
    return value


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and protocol options shared by ``segment`` and ``evaluate`` (unset values: see DEFAULT_PROTOCOL)."""
    from .inference import PATCH_PADDINGS
    from .pipeline_ovseg import REFINEMENTS

    unset = argparse.SUPPRESS  # an absent flag leaves the protocol's (or the default) value
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"folder or Hub repo id (default: {DEFAULT_MODEL})")
    parser.add_argument("--method", default=None, choices=list(METHOD_PRESETS), help="method preset (default: seed)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help=f"one of {', '.join(DTYPES)} (default: float32)")
    parser.add_argument(
        "--short-side",
        type=pixels_or_none,
        default=unset,
        help="resize the short side to this; 'none' keeps the size (448)",
    )
    parser.add_argument("--long-side", type=pixels_or_none, default=unset, help="cap on the resized long side (2048)")
    parser.add_argument(
        "--crop-size", type=pixels_or_none, default=unset, help="sliding window side; 'none' = whole image (224)"
    )
    parser.add_argument("--stride", type=positive_int, default=unset, help="sliding window stride, <= crop (112)")
    parser.add_argument(
        "--patch-padding", choices=PATCH_PADDINGS, default=unset, help="windows that are not patch multiples (center)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=unset, help="crops per forward pass (8)")
    parser.add_argument("--background-threshold", type=float, default=unset, help="below it: background (0)")
    parser.add_argument("--background-label", default=None, help="label for thresholded pixels (default: background)")
    parser.add_argument("--area-threshold", type=float, default=unset, help="drop classes below this area share")
    parser.add_argument("--refine", choices=REFINEMENTS, default=unset, help="refine the logits (pamr)")
    parser.add_argument("--logit-scale", type=float, default=None, help="dense logit scale (default: the model's)")


def protocol_kwargs(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pipeline call arguments: explicit flags, else ``base`` (a named protocol's), else the defaults."""
    kwargs = {**DEFAULT_PROTOCOL, **(base or {})}
    kwargs.update({name: getattr(args, name) for name in OVERRIDE_FLAGS if hasattr(args, name)})
    if args.logit_scale is not None:
        kwargs["dense_logit_scale"] = args.logit_scale
    if args.background_label is not None:
        kwargs["background_label"] = args.background_label
    return {k: v for k, v in kwargs.items() if v is not None or k in ("short_side", "crop_size", "stride")}


def _write_atomically(path: Path, payload: Any) -> None:
    """Write a PIL image (as PNG) or a string so that ``path`` never holds a partial file."""
    partial = path.with_name(path.name + ".partial")
    try:
        if isinstance(payload, str):
            partial.write_text(payload, encoding="utf-8")
        else:
            payload.save(partial, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def segment(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from .api import load_pipeline
    from .processing_ovseg import load_image, open_image_file
    from .visualize import label_map_image, overlay_image

    # Check every input before loading the model or writing anything; files are opened lazily (header only)
    # here and decoded one at a time below, so many large photos are never all in memory.
    labels = read_labels(args.labels, args.labels_file)
    resolve_dtype(args.dtype)
    resolve_device(args.device)
    for image in args.images:
        if not str(image).startswith(("http://", "https://")):
            open_image_file(image).close()
    out_dir = Path(args.out)
    stems = [Path(image).stem for image in args.images]
    if len(set(stems)) != len(stems):
        raise CLIError("two input images have the same file name; their outputs would overwrite each other")

    method = args.method or "seed"
    pipe = load_pipeline(args.model, method, args.dtype, args.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = protocol_kwargs(args)
    for image, stem in tqdm(list(zip(args.images, stems, strict=True)), desc="segment", unit="image"):
        photo = load_image(image)
        result = pipe(photo, candidate_labels=labels, return_label_map=True, **kwargs)
        label_map, names = result["label_map"], result["labels"]
        counts = np.bincount(label_map.ravel(), minlength=len(names))
        classes = {
            s["label"]: {
                "pixel_fraction": float(counts[names.index(s["label"])]) / label_map.size,
                "mean_score": s["score"],
            }
            for s in result["segments"]
        }
        summary = {
            "image": str(image),
            "width": photo.width,
            "height": photo.height,
            "model": args.model,
            "method": method,
            "labels": names,
            "classes": classes,
        }
        fractions = {name: c["pixel_fraction"] for name, c in classes.items()}
        _write_atomically(out_dir / f"{stem}_labels.png", label_map_image(label_map))
        _write_atomically(out_dir / f"{stem}_overlay.png", overlay_image(photo, label_map, names, fractions))
        _write_atomically(out_dir / f"{stem}.json", json.dumps(summary, indent=2))
        top = sorted(fractions.items(), key=lambda kv: -kv[1])[:4]
        tqdm.write(f"{image}: " + ", ".join(f"{name} {share:.0%}" for name, share in top) + f" -> {out_dir}/{stem}_*")
    return 0


def convert_command(args: argparse.Namespace) -> int:
    from .convert import convert

    out = convert(
        args.source,
        args.out_dir,
        method=args.method,
        arch=args.arch,
        activation=args.activation,
        tokenizer=args.tokenizer,
        trust_torchscript=args.trust_torchscript,
        license_id=args.license,
        feature_upsampler=args.feature_upsampler,
        trust_pickle=args.trust_pickle,
    )
    print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    if args.feature_upsampler:
        from safetensors import safe_open

        kind = json.loads((out / "config.json").read_text())["feature_upsampler"]
        with safe_open(out / "model.safetensors", "pt") as weights:
            names = [k for k in weights.keys() if k.startswith("feature_upsampler.")]
            count = sum(math.prod(weights.get_slice(k).get_shape()) for k in names)
        print(f"embedded SimFeatUp {kind} ({len(names)} tensors, {count:,d} values) from {args.feature_upsampler}")
    print(f'check it:  hf-ovseg segment photo.jpg --labels "road,tree,sky" --model {out}')
    return 0


REQUIRED_FILES = ("config.json", "model.safetensors", "processor_config.json", "modeling_ovseg.py", "README.md")


def push_command(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise CLIError(f"{folder} is not a converted OVSeg folder: missing {', '.join(missing)} (run hf-ovseg convert)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    visibility = "private" if args.private else "public"
    if args.dry_run:
        for path in files:
            print(f"{path.stat().st_size:>12,d}  {path.relative_to(folder)}")
        total = sum(p.stat().st_size for p in files)
        print(f"would upload {len(files)} files ({total:,d} bytes) to {visibility} repo {args.repo_id}")
        return 0
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=args.repo_id,
            commit_message="Upload OVSeg model (hf_ovseg)",
            ignore_patterns=["__pycache__/*", "*.partial"],
        )
    except Exception as error:  # network, auth and Hub errors all end here with their reason
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise CLIError(
            f"cannot push to {args.repo_id}: {reason}. Log in once with `hf auth login` (or set HF_TOKEN)"
        ) from None
    print(f"pushed {len(files)} files to {visibility} repo {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState
    from accelerate.utils import reduce

    from .api import load_pipeline
    from .evaluation import evaluate_methods, load_benchmark, markdown_table, update_model_card
    from .evaluation.protocols import SOURCES, resolve_protocol

    protocol = resolve_protocol(args.protocol, args.dataset) if args.protocol else None
    base = protocol.pipeline_arguments() if protocol else {}
    if protocol:
        base["background_index"] = protocol.background_index
    methods = [m.strip() for m in (args.methods or args.method or base.get("method", "seed")).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_PRESETS]
    if unknown:
        raise CLIError(f"unknown method(s) {', '.join(unknown)}; valid methods: {', '.join(METHOD_PRESETS)}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be a positive number of images, got {args.limit}")
    if args.update_model_card and not Path(args.update_model_card).is_file():
        raise CLIError(f"model card not found: {args.update_model_card}")
    if args.out:
        check_output_file(Path(args.out))
    bench = load_benchmark(args.dataset, args.data_root, args.limit)
    state = PartialState()
    device = args.device or (str(state.device) if state.device.type != "mps" else "cpu")
    dtype = args.dtype
    if dtype is None:  # the anchors' precision on a GPU, float32 on a CPU
        dtype = protocol.dtype if protocol and resolve_device(device).type == "cuda" else "float32"
    pipe = load_pipeline(args.model, methods[0], dtype, device)
    arguments = protocol_kwargs(args, base)
    arguments.pop("background_label", None)  # the dataset decides where thresholded pixels go
    record = {}
    if protocol:
        record = {"name": protocol.anchor, "source": SOURCES[protocol.anchor], "config": protocol.config,
                  "class_file": protocol.classes, "dtype": dtype}  # fmt: skip

    def sum_over_processes(matrix):
        if state.num_processes == 1:
            return matrix
        return reduce(torch.from_numpy(matrix).to(state.device), reduction="sum").cpu().numpy()

    results = evaluate_methods(
        pipe, bench, methods, arguments, args.model, protocol.prompts if protocol else None, record,
        state.process_index, state.num_processes, sum_over_processes, progress=state.is_local_main_process,
    )  # fmt: skip
    if state.is_main_process:
        print(markdown_table(results))
        if args.out:
            payload = [r.to_dict() for r in results]
            _write_atomically(Path(args.out), json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
        if args.update_model_card:
            update_model_card(args.update_model_card, results)
    return 0


def check_output_file(path: Path) -> None:
    """Fail before any work when ``path`` cannot be written: a folder, a missing or read-only parent."""
    if path.is_dir():
        raise CLIError(f"--out {path} is a folder; give a file name, e.g. {path / 'results.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"cannot write {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write {path}: the folder {parent} is not writable")


def protocols_command(args: argparse.Namespace) -> int:
    from .evaluation.protocols import SOURCES, protocol_table

    print(protocol_table())
    print()
    for name, source in SOURCES.items():
        print(f"- {name}: {source}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-ovseg", description="Training-free open-vocabulary semantic segmentation on a frozen CLIP."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    commands = parser.add_subparsers(dest="command", required=True)

    seg = commands.add_parser("segment", help="segment images with any list of class names")
    seg.add_argument("images", nargs="+", help="image files (or URLs)")
    seg.add_argument("--labels", help='comma-separated classes, e.g. "road,building,tree,car"')
    seg.add_argument("--labels-file", help="one class per line; synonyms comma-separated on a line")
    seg.add_argument("--out", default="hf_ovseg_out", help="output folder (default: hf_ovseg_out)")
    add_inference_arguments(seg)
    seg.set_defaults(run=segment)

    ev = commands.add_parser("evaluate", help="mIoU of one or more methods on a standard benchmark")
    ev.add_argument(
        "--dataset",
        required=True,
        help="voc21, voc20, context60, context59, coco_object, "
        "coco_stuff164k, cityscapes, ade20k, openearthmap, loveda, isaid, potsdam, vaihingen, uavid, "
        "udd5, vdd",
    )
    ev.add_argument("--data-root", required=True, help="the dataset's folder, in its standard layout")
    ev.add_argument(
        "--protocol",
        default=None,
        help="an anchor's protocol: sclip, naclip, clearclip, segearth, sfp "
        "(see hf-ovseg protocols); explicit flags override it",
    )
    ev.add_argument("--methods", default=None, help="comma-separated methods for an ablation (overrides --method)")
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ev.add_argument("--out", default=None, help="write the results (JSON) here")
    ev.add_argument("--update-model-card", default=None, help="write the results table into this README.md")
    add_inference_arguments(ev)
    ev.set_defaults(run=evaluate_command)

    prot = commands.add_parser("protocols", help="print the anchors' evaluation protocols")
    prot.set_defaults(run=protocols_command)

    conv = commands.add_parser("convert", help="turn a CLIP checkpoint into a Hub-ready OVSeg folder")
    conv.add_argument("source", help="HF CLIP folder or repo id, OpenAI .pt, or OpenCLIP .pt/.bin/.safetensors")
    conv.add_argument("out_dir", help="output folder")
    conv.add_argument("--method", default="seed", choices=list(METHOD_PRESETS), help="default method saved")
    conv.add_argument(
        "--arch",
        default="auto",
        help="auto (from tensor shapes), or ViT-B-32, ViT-B-16, ViT-L-14, "
        "ViT-L-14-336, ViT-H-14, with an optional -quickgelu suffix",
    )
    conv.add_argument(
        "--activation",
        choices=["quick_gelu", "gelu"],
        default=None,
        help="MLP activation (default: quick_gelu for OpenAI checkpoints, gelu for OpenCLIP ones)",
    )
    conv.add_argument(
        "--tokenizer",
        default=None,
        help="HF CLIP folder or repo id to take the tokenizer from (default: built from the open_clip_torch BPE file)",
    )
    conv.add_argument("--trust-torchscript", action="store_true", help="allow loading a TorchScript archive")
    conv.add_argument("--license", default=None, help="license of the source weights for the model card")
    conv.add_argument(
        "--feature-upsampler",
        default=None,
        help="a SimFeatUp checkpoint to embed (SegEarth-OV's simfeatup_dev/weights/*.ckpt)",
    )
    conv.add_argument(
        "--trust-pickle", action="store_true", help="allow a checkpoint that needs full unpickling (runs its code)"
    )
    conv.set_defaults(run=convert_command)

    push = commands.add_parser("push", help="upload a converted folder to the Hugging Face Hub")
    push.add_argument("folder", help="a folder made by hf-ovseg convert")
    push.add_argument("repo_id", help="e.g. your-name/ovseg-clip-vit-b16")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    push.set_defaults(run=push_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except (CLIError, ValueError, FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        print(f"hf-ovseg: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
