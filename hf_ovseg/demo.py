"""``hf-ovseg demo``: a Gradio web app around one pipeline (optional extra ``demo``).

A Hugging Face Space's ``app.py`` (as in the README)::

    from hf_ovseg import load_pipeline
    from hf_ovseg.demo import build_demo

    build_demo(load_pipeline("your-name/ovseg-clip-vit-b16")).launch()

The page takes an image (upload, paste, webcam or an example) and a class list with the CLI's grammar
(commas between classes, ``|`` between synonyms), a method and its main knobs; it shows the overlay with its
legend, every class's mask with its share and score, and offers the label PNG and the JSON for download. A
"Compare" tab runs two methods side by side. Bad input is a message in the page, never a stack trace, and the
app keeps serving. Requests are queued (``concurrency`` at a time); the model is loaded once, by the caller.
The two buttons are also API endpoints, ``/segment`` and ``/compare``, for ``gradio_client``.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .bulk import class_shares
from .configuration_ovseg import METHOD_PRESETS, preset_values
from .errors import first_line
from .image_processing_ovseg import load_image
from .labels import parse_labels
from .visualize import label_map_image, overlay_image

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLES = [
    [str(EXAMPLES_DIR / "warehouse_bin.jpg"), "scissors, tape, toothbrush, book, box, bottle"],
    [str(EXAMPLES_DIR / "dinner_table.jpg"), "person, chair, bottle, dining table, wall|background"],
]
#: Most classes one request may name (a page with more is not readable anyway).
MAX_DEMO_LABELS = 256
KNOBS = ("outlier_top_k", "similarity_weight", "global_debias_factor")


def gradio_module() -> Any:
    try:
        import gradio
    except ImportError:
        raise ValueError("the demo needs gradio: pip install 'hf_ovseg[demo]'") from None
    return gradio


@functools.cache
def image_input_class() -> type:
    """``gr.Image`` whose upload is passed to the request function as a file path even when Gradio cannot decode it
    (a text file named ``x.jpg``): Gradio's own decoding would fail before the request function runs and the page
    would show a bare "Error"; this way the request function explains the problem. Its frontend is gr.Image's."""
    gr = gradio_module()
    import gradio.component_meta as component_meta

    # Gradio's component metaclass writes a type stub (``demo.pyi``) beside the source file of every component
    # class; the installed package is no place for it, so that step is skipped while this class is made.
    write_stub = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:

        class ImageInput(gr.Image):
            is_template = True  # render with gr.Image's frontend

            def preprocess(self, payload: Any) -> Any:
                try:
                    return super().preprocess(payload)
                except Exception:  # PIL's UnidentifiedImageError and friends: the request function reports it
                    if payload is None or getattr(payload, "path", None) is None:
                        raise
                    return str(payload.path)

    finally:
        component_meta.create_or_modify_pyi = write_stub
    return ImageInput


class DemoError(ValueError):
    """A problem with the user's input, shown as a message in the page."""


def read_classes(text: str | None, tokenizer: Any = None) -> list[str]:
    """The class box's items: classes separated by commas, synonyms by ``|`` (as ``hf-ovseg segment --labels``)."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise DemoError("Give at least one class name, e.g. road, building, sky|clouds, tree.")
    if len(items) > MAX_DEMO_LABELS:
        raise DemoError(f"At most {MAX_DEMO_LABELS} classes at a time in the demo; this list has {len(items)}.")
    try:
        parse_labels(items, tokenizer=tokenizer)
    except ValueError as error:
        raise DemoError(str(error)) from None
    return items


def read_picture(image: Any) -> Image.Image:
    if image is None:
        raise DemoError("Give an image: upload one, paste one, take one with the webcam or pick an example.")
    try:
        return load_image(image)
    except ValueError as error:
        raise DemoError(str(error).replace(str(image), Path(str(image)).name)) from None


def segment_image(pipe: Any, image: Any, classes: str, method: str, *knobs_and_threshold: float) -> dict[str, Any]:
    """One demo request: the overlay, the per-class masks with captions, the label PNG and the JSON (files in a
    fresh temporary folder) and a markdown table of the classes."""
    picture = read_picture(image)
    items = read_classes(classes, pipe.processor.tokenizer)
    *knob_values, background_threshold = knobs_and_threshold
    knobs = {name: value for name, value in zip(KNOBS, knob_values, strict=True)}
    knobs["outlier_top_k"] = int(knobs["outlier_top_k"])
    result = pipe(picture, candidate_labels=items, method=method, background_threshold=float(background_threshold),
                  return_label_map=True, **knobs)  # fmt: skip
    label_map, names = result["label_map"], result["labels"]
    scores = {segment["label"]: segment["score"] for segment in result["segments"]}
    shares = class_shares(label_map, names)
    fractions = {name: c["pixel_fraction"] for name, c in shares.items()}
    photo = np.asarray(picture, dtype=np.float32)
    masks = []
    for name, share in sorted(fractions.items(), key=lambda kv: -kv[1]):
        inside = (label_map == names.index(name))[..., None]
        shown = np.where(inside, photo, photo * 0.25).astype(np.uint8)  # the class bright, the rest dimmed
        masks.append((Image.fromarray(shown), f"{name}: {share:.1%} of the image, score {scores[name]:.2f}"))
    folder = Path(tempfile.mkdtemp(prefix="hf_ovseg_demo_"))
    label_path, json_path = folder / "labels.png", folder / "summary.json"
    label_map_image(label_map, len(names)).save(label_path)
    summary = {"method": method, "labels": names, "knobs": knobs, "background_threshold": background_threshold,
               "width": picture.width, "height": picture.height,
               "classes": {n: {**shares[n], "mean_score": scores[n]} for n in shares}}  # fmt: skip
    json_path.write_text(json.dumps(summary, indent=2, allow_nan=False))
    rows = "\n".join(f"| {name} | {share:.1%} | {scores[name]:.3f} |" for name, share in fractions.items())
    return {
        "overlay": overlay_image(picture, label_map, names, fractions),
        "masks": masks,
        "label_file": str(label_path),
        "json_file": str(json_path),
        "table": f"| class | share | score |\n| --- | --- | --- |\n{rows}",
    }


def build_demo(pipe: Any, concurrency: int = 2, max_queue: int = 32) -> Any:
    """A Gradio ``Blocks`` app around ``pipe`` (a ``zero-shot-image-segmentation`` pipeline), queued with
    ``concurrency`` requests at a time and at most ``max_queue`` waiting. Call ``.launch()`` on it."""
    gr = gradio_module()
    default_method = pipe.model.config.method
    pipe.processor.progress_bar = True  # a long class list shows its text encoding's progress in the page

    def guarded(function):
        @functools.wraps(function)  # Gradio reads the signature (the progress argument)
        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except DemoError as error:
                raise gr.Error(str(error), print_exception=False) from None
            except Exception as error:  # an unexpected failure: a short message in the page, details in the log
                logger.exception("demo request failed")
                raise gr.Error(f"Segmentation failed: {first_line(error)}") from None

        return run

    def segment(image, classes, method, top_k, similarity, debias, threshold,
                progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's way: the page shows the text encoding's bar)
        out = segment_image(pipe, image, classes, method, top_k, similarity, debias, threshold)
        return out["overlay"], out["masks"], out["table"], out["label_file"], out["json_file"]

    def compare(image, classes, method_a, method_b):
        overlays = []
        for method in (method_a, method_b):
            values = preset_values(method)
            out = segment_image(pipe, image, classes, method, *(values[k] for k in KNOBS), 0.0)
            overlays.append(out["overlay"])
        return overlays

    def cleared(outputs):
        return lambda: [None] * len(outputs)

    def preset_knobs(method):
        values = preset_values(method)
        return [values[name] for name in KNOBS]

    with gr.Blocks(title="hf_ovseg: open-vocabulary segmentation") as demo:
        gr.Markdown(
            "# Open-vocabulary segmentation\nTraining-free, on a frozen CLIP. Give an image and any class names: "
            "commas between classes, `|` between synonyms of one class (`sky|clouds`)."
        )
        with gr.Row():
            with gr.Column():
                image = image_input_class()(type="filepath", sources=["upload", "clipboard", "webcam"], label="Image")
                classes = gr.Textbox(label="Classes", placeholder="road, building, sky|clouds, tree", lines=2)
                gr.Examples(EXAMPLES, inputs=[image, classes])
            with gr.Column():
                with gr.Tab("Segment"):
                    values = preset_values(default_method)
                    method = gr.Dropdown(list(METHOD_PRESETS), value=default_method, label="Method")
                    with gr.Accordion("Knobs", open=False):
                        top_k = gr.Slider(0, 100, value=values["outlier_top_k"], step=1, label="Outlier top-k")
                        similarity = gr.Slider(0, 3, value=values["similarity_weight"], label="Similarity weight")
                        debias = gr.Slider(0, 1, value=values["global_debias_factor"], label="Debias factor")
                        threshold = gr.Slider(0, 1, value=0.0, label="Background threshold")
                    run = gr.Button("Segment", variant="primary")
                    overlay = gr.Image(label="Overlay", type="pil", interactive=False, elem_id="overlay")
                    table = gr.Markdown(elem_id="classes-table")
                    masks = gr.Gallery(label="Classes", columns=3, elem_id="masks")
                    with gr.Row():
                        label_file = gr.File(label="Label map (PNG)", elem_id="label-file")
                        json_file = gr.File(label="Summary (JSON)", elem_id="json-file")
                with gr.Tab("Compare"):
                    with gr.Row():
                        method_a = gr.Dropdown(list(METHOD_PRESETS), value=default_method, label="Method A")
                        method_b = gr.Dropdown(list(METHOD_PRESETS), value="vanilla", label="Method B")
                    compare_button = gr.Button("Compare", variant="primary")
                    with gr.Row():
                        overlay_a = gr.Image(label="A", type="pil", interactive=False, elem_id="overlay-a")
                        overlay_b = gr.Image(label="B", type="pil", interactive=False, elem_id="overlay-b")
        method.change(preset_knobs, inputs=method, outputs=[top_k, similarity, debias])
        results = [overlay, masks, table, label_file, json_file]
        # a new request first clears the last one's results, so that an error never leaves them on screen
        run.click(cleared(results), outputs=results, queue=False, api_name=False).then(
            guarded(segment),
            inputs=[image, classes, method, top_k, similarity, debias, threshold],
            outputs=results,
            api_name="segment",
        )
        compare_button.click(cleared([overlay_a, overlay_b]), outputs=[overlay_a, overlay_b], queue=False,
                             api_name=False).then(  # fmt: skip
            guarded(compare),
            inputs=[image, classes, method_a, method_b],
            outputs=[overlay_a, overlay_b],
            api_name="compare",
        )
    return demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)


__all__ = ["EXAMPLES", "MAX_DEMO_LABELS", "DemoError", "build_demo", "read_classes", "segment_image"]
