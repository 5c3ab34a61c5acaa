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
