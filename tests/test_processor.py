"""Class-name parsing, image loading and conversion, the processor's save/load and its text side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hf_ovseg import OPENAI_IMAGENET_TEMPLATES, OVSegProcessor, parse_labels
from hf_ovseg.image_processing_ovseg import load_image

from conftest import TEMPLATES, tiny_model, tiny_processor


def test_parse_labels_synonyms_and_strings():
    labels = parse_labels(["road", "sky, clouds", " tree "])
    assert labels.labels == ("road", "sky", "tree")
    assert labels.synonyms == (("road",), ("sky", "clouds"), ("tree",))
    assert labels.flat == ("road", "sky", "clouds", "tree")
    assert labels.synonym_index.tolist() == [[0, 0], [1, 2], [3, 3]]
    assert parse_labels("road, building,car").labels == ("road", "building", "car")


@pytest.mark.parametrize("bad", [[], "", [" ", ","], ",,"])
def test_parse_labels_empty(bad):
    with pytest.raises(ValueError, match="candidate_labels is empty"):
        parse_labels(bad)


def test_parse_labels_duplicates_and_types():
    with pytest.raises(ValueError, match="duplicate labels: cat"):
        parse_labels(["cat", "cat"])
    with pytest.raises(ValueError, match="must be a string or a list of strings"):
        parse_labels(3)


def test_templates_are_the_80_openai_ones():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 == len(set(OPENAI_IMAGENET_TEMPLATES))
    assert all(t.count("{}") == 1 for t in OPENAI_IMAGENET_TEMPLATES)
    assert "a photo of a {}." in OPENAI_IMAGENET_TEMPLATES
    with pytest.raises(ValueError, match="every prompt template needs exactly one .{}."):
        tiny_processor(["no placeholder"])


def test_tokenizer_gives_openai_ids():
    ids = tiny_processor().tokenizer("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize(
    ("mode", "array"),
    [
        ("L", np.full((5, 6), 100, np.uint8)),
        ("RGBA", np.dstack([np.full((5, 6, 3), 100, np.uint8), np.full((5, 6), 255, np.uint8)])),
        ("I;16", np.full((5, 6), 100 * 257, np.uint16)),
    ],
)
def test_load_image_modes_become_rgb(mode, array):
    source = Image.fromarray(array)
    assert source.mode == mode
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (6, 5)
    assert np.asarray(image)[0, 0].tolist() == [100, 100, 100]


def test_load_palette_and_numpy_and_files(tmp_path, fixtures):
    mask = fixtures / "voc" / "SegmentationClass" / "2007_000033.png"
    palette = Image.open(mask)
    assert palette.mode == "P"
    rgb = load_image(mask)
    assert rgb.mode == "RGB" and rgb.size == palette.size
    assert np.asarray(load_image(np.zeros((4, 3), np.float32) + 0.5))[0, 0].tolist() == [128, 128, 128]
    assert load_image(np.zeros((4, 3, 4), np.uint8)).size == (3, 4)
    with pytest.raises(ValueError, match="must be HxW"):
        load_image(np.zeros((4, 3, 2)))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg is not an image file"):
        load_image(text)
    with pytest.raises(ValueError, match="image file not found: .*missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="cannot read an image from a int"):
        load_image(3)


def test_preprocess_resizes_short_side_and_normalises():
    processor = tiny_processor()
    image = Image.fromarray(np.full((50, 100, 3), 255, np.uint8))
    inputs = processor.image_processor(image, short_side=20)
    pixels = inputs["pixel_values"]
    assert pixels.shape == (1, 3, 20, 40) and inputs["original_sizes"] == [(50, 100)]
    mean, std = torch.tensor(processor.image_processor.image_mean), torch.tensor(processor.image_processor.image_std)
    torch.testing.assert_close(pixels[0, :, 0, 0], (1 - mean) / std)
    assert processor.image_processor(image, short_side=None)["pixel_values"].shape == (1, 3, 50, 100)


def test_processor_save_load_round_trip(tmp_path):
    processor = tiny_processor(["a {} here.", "the {}."])
    processor.save_pretrained(tmp_path)
    loaded = OVSegProcessor.from_pretrained(tmp_path)
    assert loaded.templates == ["a {} here.", "the {}."]
    assert loaded.image_processor.image_mean == processor.image_processor.image_mean
    text = "a photo of a fiskars_scissors"
    assert loaded.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]


def test_text_embeddings_are_normalised_template_means_and_cached():
    model, processor = tiny_model(), tiny_processor()
    labels = parse_labels(["cat", "sky,clouds"])
    calls = []
    encode = model.encode_text
    model.encode_text = lambda *a, **k: calls.append(1) or encode(*a, **k)
    got = processor.text_embeddings(model, labels)
    assert got.shape == (3, 16)
    for row, name in enumerate(["cat", "sky", "clouds"]):
        tokens = processor.tokenizer([t.format(name) for t in TEMPLATES], padding=True, return_tensors="pt")
        with torch.no_grad():
            per_template = F.normalize(encode(tokens["input_ids"], tokens["attention_mask"]), dim=-1)
        torch.testing.assert_close(got[row], F.normalize(per_template.mean(0), dim=-1), rtol=1e-5, atol=1e-6)
    encoded = len(calls)
    again = processor.text_embeddings(model, parse_labels(["cat", "sky,clouds"]))
    assert len(calls) == encoded and processor.text_cache.hits == 1 and torch.equal(again, got)
    processor.text_embeddings(model, parse_labels(["cat"]))
    assert len(calls) > encoded and processor.text_cache.misses == 2
