"""A saved folder loads with trust_remote_code in a process where hf_ovseg cannot be imported, both
from the folder and by repo id from a populated Hugging Face cache under HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import torch

from conftest import run_clean_process, tiny_model

# Runs in a fresh interpreter: hf_ovseg is made unimportable and the repository is off sys.path.
CHILD = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoConfig, AutoModel
    source, inputs, output = sys.argv[1:4]
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert config.method == "seed", config.method
    data = torch.load(inputs)
    with torch.no_grad():
        out = model(data["pixel_values"], text_embeds=data["text_embeds"])
    torch.save({"logits": out.logits, "outliers": out.outlier_indices, "module": type(model).__module__}, output)
    """
)


def run_child(source: str, tmp_path: Path, env_extra: dict[str, str]) -> dict:
    model = tiny_model("seed", outlier_top_k=5)
    torch.manual_seed(3)
    inputs = {"pixel_values": torch.randn(2, 3, 32, 40), "text_embeds": torch.randn(4, 16)}
    torch.save(inputs, tmp_path / "inputs.pt")
    run_clean_process(CHILD, [source, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")], tmp_path, env_extra)
    got = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = model(**inputs)
    assert torch.equal(got["logits"], expected.logits)
    assert torch.equal(got["outliers"], expected.outlier_indices)
    return got


def test_remote_code_from_folder(tmp_path):
    folder = tmp_path / "model"
    tiny_model("seed", outlier_top_k=5).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_ovseg.OVSegModel"
    run_child(str(folder), tmp_path, {})


def test_remote_code_by_repo_id_from_hub_cache(tmp_path):
    folder = tmp_path / "model"
    tiny_model("seed", outlier_top_k=5).save_pretrained(folder)
    # The layout huggingface_hub leaves after a download: blobs are referenced from a snapshot.
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--hf-ovseg--tiny-random"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    got = run_child("hf-ovseg/tiny-random", tmp_path, {"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")})
    assert "hf_ovseg" not in got["module"].split(".")[0]


IMAGE_CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoImageProcessor, AutoProcessor
    folder, image, output = sys.argv[1:4]
    image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(image_processor).__name__ == "OVSegImageProcessor", type(image_processor)
    assert type(processor.image_processor).__name__ == "OVSegImageProcessor", type(processor.image_processor)
    assert type(image_processor).__module__.startswith("transformers_modules"), type(image_processor).__module__
    inputs = image_processor(image)
    torch.save({"pixels": inputs["pixel_values"], "sizes": inputs["original_sizes"],
                "sides": (image_processor.short_side, image_processor.long_side)}, output)
    """
)


def test_image_processor_is_what_auto_image_processor_returns(tmp_path, fixtures):
    """The saved preprocessor_config.json names OVSegImageProcessor (with its code beside it), so a clean process
    gets the anchors' resize and normalisation from AutoImageProcessor, equal to the in-process result."""
    from conftest import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.processor.image_processor.short_side = 96
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "OVSegImageProcessor"
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_ovseg.OVSegImageProcessor"
    assert (saved["short_side"], saved["long_side"]) == (96, 2048)
    photo = fixtures / "voc" / "JPEGImages" / "2011_000006.jpg"
    run_clean_process(IMAGE_CHILD, [str(folder), str(photo), str(tmp_path / "out.pt")], tmp_path)
    got = torch.load(tmp_path / "out.pt")
    expected = pipe.processor.image_processor(str(photo))
    assert got["sides"] == (96, 2048)
    assert got["sizes"] == expected["original_sizes"]
    assert min(got["pixels"].shape[-2:]) == 96
    assert torch.equal(got["pixels"], expected["pixel_values"])
