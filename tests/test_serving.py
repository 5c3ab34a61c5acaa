"""Serving: a folder made by plain ``model.save_pretrained`` + ``processor.save_pretrained`` works with
``pipeline(...)`` in a process without hf_ovseg (from the folder and by repo id from an offline Hub cache), and
one pipeline serves concurrent calls with different methods, labels and knobs exactly as sequential calls."""

from __future__ import annotations

import shutil
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_ovseg import OVSegModel
from hf_ovseg.labels import parse_labels
from hf_ovseg.text_cache import TextEmbeddingCache

from conftest import run_clean_process, tiny_model, tiny_pipeline, tiny_processor

FAST = {"short_side": 64, "crop_size": 32, "stride": 16}

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from transformers import AutoModel, AutoProcessor, pipeline
    source, photo, output = sys.argv[1:4]
    pipe = pipeline("zero-shot-image-segmentation", model=source, trust_remote_code=True)
    assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
    assert type(AutoModel.from_pretrained(source, trust_remote_code=True)).__name__ == "OVSegModel"
    assert type(AutoProcessor.from_pretrained(source, trust_remote_code=True)).__name__ == "OVSegProcessor"
    out = pipe(photo, candidate_labels=["person", "sky,clouds"], method="clearclip", short_side=64, crop_size=32,
               stride=16, return_label_map=True)
    np.save(output, out["label_map"])
    """
)


def saved_the_plain_way(folder):
    model = tiny_model("seed", outlier_top_k=4)
    model.save_pretrained(folder)  # no hf-ovseg convert, no pipeline.save_pretrained
    tiny_processor().save_pretrained(folder)
    return model


def expected_map(photo):
    pipe = tiny_pipeline("seed", outlier_top_k=4)
    kwargs = {"method": "clearclip", "return_label_map": True, **FAST}
    return pipe(str(photo), candidate_labels=["person", "sky,clouds"], **kwargs)["label_map"]


def test_model_save_pretrained_folder_serves_the_pipeline(fixtures, tmp_path):
    folder = tmp_path / "model"
    saved_the_plain_way(folder)
    assert (folder / "pipeline_ovseg.py").is_file() and (folder / "inference.py").is_file()
    photo = fixtures / "voc" / "JPEGImages" / "2011_000006.jpg"
    run_clean_process(CHILD, [str(folder), str(photo), str(tmp_path / "map.npy")], tmp_path)
    assert np.array_equal(np.load(tmp_path / "map.npy"), expected_map(photo))


def test_push_to_hub_layout_serves_the_pipeline_by_repo_id(fixtures, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    model = saved_the_plain_way(folder)
    uploaded = {}

    class Hub:  # the Hub API push_to_hub talks to, offline
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

    class Card:
        def save(self, path):
            Path(path).write_text("card")

    def upload(self, working_dir, repo_id, **kwargs):  # what push_to_hub would send
        uploaded[repo_id] = sorted(p.name for p in Path(working_dir).iterdir())

    import transformers.utils.hub as hub

    monkeypatch.setattr(hub, "hf_api", lambda: Hub())
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *args, **kwargs: Card())
    monkeypatch.setattr(OVSegModel, "_upload_modified_files", upload)
    model.push_to_hub("me/ovseg-tiny")
    assert {"config.json", "model.safetensors", "modeling_ovseg.py", "pipeline_ovseg.py", "inference.py",
            "processing_ovseg.py"} <= set(uploaded["me/ovseg-tiny"])  # fmt: skip
    # the layout huggingface_hub leaves after downloading that repo: snapshots referenced from refs/main
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--me--ovseg-tiny"
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    photo = fixtures / "voc" / "JPEGImages" / "2011_000006.jpg"
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home")}
    run_clean_process(CHILD, ["me/ovseg-tiny", str(photo), str(tmp_path / "map.npy")], tmp_path, env)
    assert np.array_equal(np.load(tmp_path / "map.npy"), expected_map(photo))


CALLS = [
    ({"method": "seed"}, ["person", "sky,clouds", "grass"]),
    ({"method": "clearclip"}, ["person", "chair"]),
    ({"method": "sclip", "dense_logit_scale": 65.0}, ["bus", "car", "road"]),
    ({"outlier_top_k": 2, "similarity_weight": 0.3}, ["person", "sky,clouds", "grass"]),
    ({"method": "naclip", "naclip_gaussian_std": 2.0}, ["sofa", "person"]),
    ({"method": "segearth", "feature_upsampling": False, "background_threshold": 0.4}, ["bottle", "wall"]),
    ({"method": "maskclip"}, ["person", "sky,clouds", "grass"]),
    ({"global_debias_factor": 0.5, "area_threshold": 0.1}, ["bus", "car"]),
]


def test_concurrent_calls_equal_sequential_calls(fixtures):
    pipe = tiny_pipeline("seed", outlier_top_k=5)
    photos = sorted(str(p) for p in (fixtures / "voc" / "JPEGImages").glob("*.jpg"))[:3]

    def call(index):
        options, labels = CALLS[index]
        return [pipe(p, candidate_labels=labels, return_probabilities=True, **FAST, **options) for p in photos]

    sequential = [call(i) for i in range(len(CALLS))]
    results: dict[int, list] = {}
    errors = []
    start = threading.Barrier(len(CALLS))

    def worker(index):
        try:
            start.wait()
            results[index] = call(index)
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(CALLS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for index, expected in enumerate(sequential):
        for got, want in zip(results[index], expected, strict=True):
            assert got["labels"] == want["labels"]
            assert np.array_equal(got["label_map"], want["label_map"]), CALLS[index]
            assert np.array_equal(got["probabilities"], want["probabilities"]), CALLS[index]
    assert pipe.model.config.method == "seed" and pipe.model.config.outlier_top_k == 5  # never changed


def test_text_cache_is_bounded_and_safe_under_threads():
    model = tiny_model()
    processor = tiny_processor()
    processor.text_cache = TextEmbeddingCache(max_entries=4)
    label_sets = [parse_labels([f"thing {i}", f"stuff {i}"]) for i in range(10)]
    reference = {i: tiny_processor().text_embeddings(model, labels) for i, labels in enumerate(label_sets)}
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(30):
            index = int(rng.integers(len(label_sets)))
            got = processor.text_embeddings(model, label_sets[index])
            if not torch.equal(got, reference[index]):
                errors.append(index)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(processor.text_cache) <= 4
    assert processor.text_cache.hits + processor.text_cache.misses == 8 * 30
    with pytest.raises(ValueError, match="max_entries >= 1"):
        TextEmbeddingCache(0)


def test_lru_keeps_the_most_recent():
    cache = TextEmbeddingCache(max_entries=2)
    for key in ("a", "b"):
        cache.put((key,), torch.zeros(1))
    cache.get(("a",))  # a is now the most recent
    cache.put(("c",), torch.zeros(1))
    assert cache.get(("b",)) is None and cache.get(("a",)) is not None and len(cache) == 2


def test_loaded_model_reads_knobs_from_settings_only(tmp_path):
    tiny_model("seed").save_pretrained(tmp_path)
    model = OVSegModel.from_pretrained(tmp_path).eval()
    settings = model.config.with_method("sclip")
    assert settings is not model.config and settings.vision_config is model.config.vision_config
    assert model.config.method == "seed" and settings.method == "sclip"
