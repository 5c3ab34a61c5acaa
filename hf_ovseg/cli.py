"""``hf-ovseg``: segment images from the command line (more subcommands: see ``hf-ovseg --help``)."""

from __future__ import annotations

import argparse
import json
import logging
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


#: Inference protocol used when neither a flag nor a --protocol gives a value.
DEFAULT_PROTOCOL = {"short_side": 448, "crop_size": 224, "stride": 112, "batch_size": 8, "background_threshold": 0.0}


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and protocol options shared by ``segment`` and ``evaluate`` (unset values: see DEFAULT_PROTOCOL)."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"folder or Hub repo id (default: {DEFAULT_MODEL})")
    parser.add_argument("--method", default=None, choices=list(METHOD_PRESETS), help="method preset (default: seed)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)} (default: float32)")
    parser.add_argument("--short-side", type=int, default=None, help="resize short side to this, 0 = keep (448)")
    parser.add_argument("--crop-size", type=int, default=None, help="sliding window side, 0 = whole image (224)")
    parser.add_argument("--stride", type=int, default=None, help="sliding window stride (112)")
    parser.add_argument("--batch-size", type=int, default=None, help="crops per forward pass (8)")
    parser.add_argument("--background-threshold", type=float, default=None, help="below it: background (0)")
    parser.add_argument("--background-label", default=None, help="label for thresholded pixels (default: background)")
    parser.add_argument("--logit-scale", type=float, default=None, help="dense logit scale (default: the model's)")


def protocol_kwargs(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pipeline protocol arguments: explicit flags, else ``base`` (a named protocol), else the defaults."""
    base = {**DEFAULT_PROTOCOL, **(base or {})}
    kwargs = {name: getattr(args, name) if getattr(args, name) is not None else base[name] for name in DEFAULT_PROTOCOL}
    kwargs["short_side"] = kwargs["short_side"] or None
    kwargs["crop_size"] = kwargs["crop_size"] or None
    logit_scale = args.logit_scale if args.logit_scale is not None else base.get("dense_logit_scale")
    if logit_scale is not None:
        kwargs["dense_logit_scale"] = logit_scale
    if args.background_label is not None:
        kwargs["background_label"] = args.background_label
    return kwargs


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
    )
    print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
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

    base = resolve_protocol(args.protocol, args.dataset).to_dict() if args.protocol else {}
    methods = [m.strip() for m in (args.methods or args.method or base.get("method", "seed")).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_PRESETS]
    if unknown:
        raise CLIError(f"unknown method(s) {', '.join(unknown)}; valid methods: {', '.join(METHOD_PRESETS)}")
    if args.update_model_card and not Path(args.update_model_card).is_file():
        raise CLIError(f"model card not found: {args.update_model_card}")
    bench = load_benchmark(args.dataset, args.data_root, args.limit)
    state = PartialState()
    device = args.device or (str(state.device) if state.device.type != "mps" else "cpu")
    pipe = load_pipeline(args.model, methods[0], args.dtype, device)
    protocol = protocol_kwargs(args, base)
    protocol.pop("background_label", None)  # the dataset decides where thresholded pixels go
    if args.protocol:
        protocol = {"name": args.protocol, "source": SOURCES[args.protocol], **protocol}

    def sum_over_processes(matrix):
        if state.num_processes == 1:
            return matrix
        return reduce(torch.from_numpy(matrix).to(state.device), reduction="sum").cpu().numpy()

    results = evaluate_methods(
        pipe, bench, methods, protocol, args.model, state.process_index, state.num_processes, sum_over_processes,
        progress=state.is_local_main_process,
    )  # fmt: skip
    if state.is_main_process:
        print(markdown_table(results))
        if args.out:
            payload = [r.to_dict() for r in results]
            Path(args.out).write_text(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
        if args.update_model_card:
            update_model_card(args.update_model_card, results)
    return 0


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
