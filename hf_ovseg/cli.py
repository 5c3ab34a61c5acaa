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
from .errors import first_line

logger = logging.getLogger("hf_ovseg")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors printed as one line, like every other error of hf-ovseg."""

    def error(self, message: str):
        self.exit(2, f"hf-ovseg: error: {message} (see {self.prog} --help)\n")


def read_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """Classes from ``--labels "a,b,c"`` (one class per comma) or ``--labels-file`` (one class per line,
    synonyms comma-separated)."""
    from .labels import parse_labels

    if (labels is None) == (labels_file is None):
        raise CLIError("give the classes with exactly one of --labels or --labels-file")
    if labels_file is not None:
        path = Path(labels_file)
        if not path.is_file():
            raise CLIError(f"labels file not found: {labels_file}")
        items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = f"--labels-file {labels_file}"
    else:
        items, source = [item.strip() for item in labels.split(",")], "--labels"
    try:
        parse_labels(items, source=source)  # empty or duplicate classes fail here, before any work
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
    "batch_size": "auto",
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


def batch_size_or_auto(text: str) -> int | str:
    """argparse type: a positive number of crops, or ``auto``."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def workers_count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of worker processes (0 or more), got {text!r}")
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
    parser.add_argument(
        "--batch-size",
        type=batch_size_or_auto,
        default=unset,
        help="crops per forward pass, or auto: 8 on a CPU, as many as fit (up to 256) on a GPU (auto)",
    )
    parser.add_argument("--background-threshold", type=float, default=unset, help="below it: background (0)")
    parser.add_argument("--background-label", default=None, help="label for thresholded pixels (default: background)")
    parser.add_argument("--area-threshold", type=float, default=unset, help="drop classes below this area share")
    parser.add_argument("--refine", choices=REFINEMENTS, default=unset, help="refine the logits (pamr)")
    parser.add_argument("--logit-scale", type=float, default=None, help="dense logit scale (default: the model's)")
    parser.add_argument(
        "--no-feature-upsampler",
        action="store_true",
        help="run a method that uses SimFeatUp (segearth) without it; recorded as feature_upsampling=false",
    )


def protocol_kwargs(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pipeline call arguments: explicit flags, else ``base`` (a named protocol's), else the defaults."""
    kwargs = {**DEFAULT_PROTOCOL, **(base or {})}
    kwargs.update({name: getattr(args, name) for name in OVERRIDE_FLAGS if hasattr(args, name)})
    if args.logit_scale is not None:
        kwargs["dense_logit_scale"] = args.logit_scale
    if args.no_feature_upsampler:
        kwargs["feature_upsampling"] = False
    if args.background_label is not None:
        kwargs["background_label"] = args.background_label
    return {k: v for k, v in kwargs.items() if v is not None or k in ("short_side", "crop_size", "stride")}


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise CLIError(f"--bands takes three band numbers such as 3,2,1, got {text!r}") from None
    if len(bands) != 3 or min(bands) < 1:
        raise CLIError(f"--bands takes three band numbers (from 1) such as 3,2,1, got {text!r}")
    return bands


def default_workers() -> int:
    """DataLoader workers for decoding: one core less than the machine has, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


#: The flag of each pipeline argument, for error messages.
FLAGS = {name: "--" + name.replace("_", "-") for name in OVERRIDE_FLAGS} | {"crop_batch_size": "--batch-size"}


def check_flag_values(kwargs: dict[str, Any]) -> None:
    """The pipeline call arguments given by flags (``protocol_kwargs``), checked before the model loads; an error
    names the flag typed."""
    from .pipeline_ovseg import check_call_arguments

    check_call_arguments({("crop_batch_size" if k == "batch_size" else k): v for k, v in kwargs.items()}, FLAGS)


def check_dtype_and_device(args: argparse.Namespace) -> None:
    """``--dtype`` and ``--device`` checked before the model loads; float16 on a CPU gets a warning."""
    dtype, device = resolve_dtype(args.dtype), resolve_device(args.device)
    if dtype == DTYPES["float16"] and device.type == "cpu":
        logger.warning(
            "--dtype float16 on a CPU is slower than float32 (CPUs have no float16 arithmetic: 2.8x slower in one "
            "measurement) and less precise; use it on a GPU (--device cuda)"
        )


def process_device(args: argparse.Namespace, state: Any) -> str:
    """``--device``, else the device accelerate gives this process (the CPU instead of Apple's MPS)."""
    return args.device or (str(state.device) if state.device.type != "mps" else "cpu")


def segment(args: argparse.Namespace) -> int:
    import time

    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .api import load_pipeline
    from .bulk import check_inputs, check_output_dir, find_inputs, segment_jobs, write_summary
    from .text_cache import DiskTextCache
    from .visualize import label_map_format

    # Every check that does not need the model runs first: nothing is loaded or written for a bad input.
    items = read_labels(args.labels, args.labels_file)
    check_dtype_and_device(args)
    kwargs = protocol_kwargs(args)
    check_flag_values(kwargs)
    threshold_label = int(kwargs.get("background_threshold", 0) > 0 or "background_label" in kwargs)
    label_map_format(len(items) + threshold_label)  # more labels than a 16-bit label map holds fails here
    bands = parse_bands(args.bands)
    jobs = find_inputs(args.images)
    check_inputs(jobs, bands)
    out_dir = Path(args.out)
    check_output_dir(out_dir)

    state = PartialState()
    method = args.method or "seed"
    pipe = load_pipeline(args.model, method, args.dtype, process_device(args, state))
    if not args.no_text_cache:
        pipe.processor.disk_cache = DiskTextCache()
    pipe.processor.progress_bar = state.is_local_main_process  # a long label list shows its text encoding
    resize, call = pipe.prepare(items, method=method, **kwargs)
    short_side, long_side = resize["short_side"], resize["long_side"]
    meta = {"model": args.model, "method": method}
    shard = [(i, job) for i, job in enumerate(jobs) if i % state.num_processes == state.process_index]
    workers = default_workers() if args.num_workers is None else args.num_workers
    start = time.perf_counter()
    records = []
    verbose = len(jobs) <= 20
    for record in segment_jobs(
        pipe, call, shard, out_dir, meta, short_side, long_side, workers, args.skip_existing, bands,
        args.tile_size, progress=state.is_local_main_process,
    ):  # fmt: skip
        records.append(record)
        if "error" in record:
            tqdm.write(f"hf-ovseg: error: {record['input']}: {record['error']}", file=sys.stderr)
        elif verbose:
            top = sorted(record["classes"].items(), key=lambda kv: -kv[1])[:4]
            shares = ", ".join(f"{name} {share:.0%}" for name, share in top)
            tqdm.write(f"{record['input']}: {shares} -> {out_dir / record['outputs']['labels']}")
    if state.num_processes > 1:
        records = gather_object(records)
    failed = sum("error" in r for r in records)
    if state.is_main_process:
        write_summary(out_dir, records, {**meta, "labels": call.names})
        seconds = time.perf_counter() - start
        print(
            f"segmented {len(records) - failed} of {len(records)} images in {seconds:.1f} s "
            f"({(len(records) - failed) / max(seconds, 1e-9):.2f} images/s); {failed} failed "
            f"-> {out_dir / 'summary.json'}"
        )
    return 1 if failed else 0


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
        proxy=args.proxy,
        sam=args.sam,
    )
    print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    config = json.loads((out / "config.json").read_text())
    if args.feature_upsampler:
        names, count = saved_tensors(out, "feature_upsampler.")
        print(f"embedded SimFeatUp {config['feature_upsampler']} ({names} tensors, {count:,d} values) from "
              f"{args.feature_upsampler}")  # fmt: skip
    if args.proxy:
        names, count = saved_tensors(out, "proxy_model.")
        kind = config["proxy_config"]["model_type"]
        print(f"embedded the proxy {args.proxy} ({kind}: {names} tensors, {count:,d} values); its methods: "
              "proxyclip (dino), proxyclip_dinov2, proxyclip_sam, seed_proxy, trident (dino)")  # fmt: skip
    if args.sam:
        names, count = saved_tensors(out, "sam_model.")
        print(f"embedded SAM {args.sam} ({names} tensors, {count:,d} values); its method: trident (with a DINO "
              "proxy)")  # fmt: skip
    print(f'check it:  hf-ovseg segment photo.jpg --labels "road,tree,sky" --model {out}')
    return 0


def saved_tensors(folder: Path, prefix: str) -> tuple[int, int]:
    """How many tensors, and values, a saved model.safetensors holds under ``prefix``."""
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as weights:
        names = [k for k in weights.keys() if k.startswith(prefix)]
        return len(names), sum(math.prod(weights.get_slice(k).get_shape()) for k in names)


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
        raise CLIError(
            f"cannot push to {args.repo_id}: {first_line(error)}. Log in once with `hf auth login` (or set HF_TOKEN)"
        ) from None
    print(f"pushed {len(files)} files to {visibility} repo {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState
    from accelerate.utils import reduce

    from .api import load_pipeline
    from .bulk import write_atomically
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
    check_dtype_and_device(args)
    arguments = protocol_kwargs(args, base)
    check_flag_values(arguments)
    bench = load_benchmark(args.dataset, args.data_root, args.limit)
    state = PartialState()
    device = process_device(args, state)
    dtype = args.dtype
    if dtype is None:  # the anchors' precision on a GPU, float32 on a CPU
        dtype = protocol.dtype if protocol and resolve_device(device).type == "cuda" else "float32"
    pipe = load_pipeline(args.model, methods[0], dtype, device)
    pipe.processor.progress_bar = state.is_local_main_process
    arguments.pop("background_label", None)  # the dataset decides where thresholded pixels go
    record = {}
    if protocol:
        record = {"name": protocol.anchor, "source": SOURCES[protocol.anchor], "config": protocol.config,
                  "class_file": protocol.classes, "dtype": dtype}  # fmt: skip

    def sum_over_processes(matrix):
        if state.num_processes == 1:
            return matrix
        return reduce(torch.from_numpy(matrix).to(state.device), reduction="sum").cpu().numpy()

    workers = default_workers() if args.num_workers is None else args.num_workers
    results = evaluate_methods(
        pipe, bench, methods, arguments, args.model, protocol.prompts if protocol else None, record,
        state.process_index, state.num_processes, sum_over_processes, progress=state.is_local_main_process,
        num_workers=workers, synonym_separator=protocol.synonym_separator if protocol else None,
    )  # fmt: skip
    if state.is_main_process:
        print(markdown_table(results))
        if args.out:
            payload = [r.to_dict() for r in results]
            result = json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, allow_nan=False)
            write_atomically(Path(args.out), result)
        if args.update_model_card:
            update_model_card(args.update_model_card, results)
    return 0


def check_output_file(path: Path) -> None:
    """Fail before any work when ``path`` cannot be written: a folder, a missing or read-only parent."""
    from .bulk import check_writable

    if path.is_dir():
        raise CLIError(f"--out {path} is a folder; give a file name, e.g. {path / 'results.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"cannot write {path}: the folder {parent} does not exist")
    check_writable(parent, f"--out {path}")


def demo_command(args: argparse.Namespace) -> int:
    from .api import load_pipeline
    from .demo import build_demo, gradio_module

    gradio_module()  # a missing extra fails before the model loads
    pipe = load_pipeline(args.model, args.method or "seed", args.dtype, args.device)
    build_demo(pipe, concurrency=args.concurrency).launch(server_name=args.host, server_port=args.port)
    return 0


def protocols_command(args: argparse.Namespace) -> int:
    from .evaluation.protocols import SOURCES, not_offered_table, protocol_table

    print(protocol_table())
    print()
    for name, source in SOURCES.items():
        print(f"- {name}: {source}")
    print("\nOfficial configs without a protocol here:")
    print(not_offered_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .evaluation.benchmarks import DATASETS
    from .evaluation.protocols import ANCHORS

    parser = OneLineParser(
        prog="hf-ovseg", description="Training-free open-vocabulary semantic segmentation on a frozen CLIP."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    commands = parser.add_subparsers(dest="command", required=True)

    seg = commands.add_parser("segment", help="segment images with any list of class names")
    seg.add_argument("images", nargs="+", help="image files, folders (searched recursively), globs or URLs")
    seg.add_argument(
        "--labels", help='comma-separated classes, synonyms joined by |, e.g. "road,building,sky|clouds,tree"'
    )
    seg.add_argument("--labels-file", help="one class per line; synonyms separated by commas (or |) on a line")
    seg.add_argument("--out", default="hf_ovseg_out", help="output folder (default: hf_ovseg_out)")
    seg.add_argument("--skip-existing", action="store_true", help="skip images whose outputs exist (resume a run)")
    seg.add_argument(
        "--num-workers", type=workers_count, default=None, help="DataLoader workers decoding images (cores - 1, max 4)"
    )
    seg.add_argument("--no-text-cache", action="store_true", help="do not keep text embeddings on disk")
    seg.add_argument("--bands", default=None, help="GeoTIFF bands used as R,G,B, e.g. 3,2,1 (default: tagged RGB)")
    seg.add_argument(
        "--tile-size",
        type=positive_int,
        default=None,
        help="GeoTIFF tile side at native resolution (1024), rounded down to a multiple of the stride",
    )
    add_inference_arguments(seg)
    seg.set_defaults(run=segment)

    ev = commands.add_parser("evaluate", help="mIoU of one or more methods on a standard benchmark")
    ev.add_argument("--dataset", required=True, help=", ".join(DATASETS))
    ev.add_argument("--data-root", required=True, help="the dataset's folder, in its standard layout")
    ev.add_argument(
        "--protocol",
        default=None,
        help=f"an anchor's protocol: {', '.join(ANCHORS)} (see hf-ovseg protocols); explicit flags override it",
    )
    ev.add_argument("--methods", default=None, help="comma-separated methods for an ablation (overrides --method)")
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ev.add_argument(
        "--num-workers", type=workers_count, default=None, help="DataLoader workers decoding images (cores - 1, max 4)"
    )
    ev.add_argument("--out", default=None, help="write the results (JSON) here")
    ev.add_argument("--update-model-card", default=None, help="write the results table into this README.md")
    add_inference_arguments(ev)
    ev.set_defaults(run=evaluate_command)

    demo = commands.add_parser("demo", help="a web demo (Gradio; pip install 'hf_ovseg[demo]')")
    demo.add_argument("--model", default=DEFAULT_MODEL, help=f"folder or Hub repo id (default: {DEFAULT_MODEL})")
    demo.add_argument("--method", default=None, choices=list(METHOD_PRESETS), help="preselected method (seed)")
    demo.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    demo.add_argument("--dtype", default=None, help=f"one of {', '.join(DTYPES)} (default: float32)")
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    demo.add_argument("--concurrency", type=positive_int, default=2, help="requests processed at once (2)")
    demo.set_defaults(run=demo_command)

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
    conv.add_argument(
        "--proxy",
        default=None,
        help="a proxy vision model to embed (HF folder or Hub id): DINO (facebook/dino-vitb8), DINOv2 "
        "(facebook/dinov2-with-registers-base) or SAM (facebook/sam-vit-base), for the proxyclip presets",
    )
    conv.add_argument(
        "--sam",
        default=None,
        help="a whole SAM to embed (HF folder or Hub id of a SamModel, e.g. facebook/sam-vit-base), for the "
        "trident preset (with --proxy facebook/dino-vitb16)",
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except (CLIError, ValueError, FileNotFoundError, PermissionError) as error:
        print(f"hf-ovseg: error: {first_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
