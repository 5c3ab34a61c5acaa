"""The Gradio demo in a real browser (Debian's Chromium driven by Playwright): a segmentation with its overlay,
masks, table and downloads; the compare tab; bad input as a message in the page, after which the app still
serves; and the request functions on their own."""

from __future__ import annotations

import io
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_ovseg.demo import EXAMPLES, MAX_DEMO_LABELS, DemoError, build_demo, read_classes, segment_image

from conftest import tiny_pipeline

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("seed", outlier_top_k=3)


def test_building_the_demo_writes_nothing_into_the_package(pipe):
    """Gradio writes a ``.pyi`` stub beside the source file of each component class it is given; the demo's
    image input must not leave one in the installed package (it broke ``ruff check .`` in a checkout)."""
    import hf_ovseg.demo as demo

    stub = Path(demo.__file__).with_suffix(".pyi")
    stub.unlink(missing_ok=True)
    demo.image_input_class.__wrapped__()  # a new class, as the first demo of a process makes (it is cached)
    build_demo(pipe)
    assert not stub.exists()


def test_request_function_outputs(pipe, fixtures):
    photo = fixtures / "voc" / "JPEGImages" / "2011_000025.jpg"
    out = segment_image(pipe, str(photo), "bus, car, road|street", "clearclip", 5, 1.0, 0.2, 0.0)
    assert out["overlay"].width > 500 and out["overlay"].height >= 375
    assert out["masks"] and all(caption.count("%") == 1 and "score" in caption for _, caption in out["masks"])
    label_map = np.array(Image.open(out["label_file"]))
    summary = json.loads(Path(out["json_file"]).read_text())
    assert label_map.shape == (375, 500) and summary["labels"] == ["bus", "car", "road"]
    assert sum(c["pixel_fraction"] for c in summary["classes"].values()) == pytest.approx(1.0)
    expected = pipe(str(photo), candidate_labels=["bus", "car", "road|street"], method="clearclip",
                    outlier_top_k=5, similarity_weight=1.0, global_debias_factor=0.2,
                    return_label_map=True)["label_map"]  # fmt: skip
    assert np.array_equal(label_map, expected)


@pytest.mark.parametrize(
    ("image", "classes", "message"),
    [
        ("photo", " , ", "Give at least one class name"),
        (None, "road", "Give an image"),
        ("text", "road", "is not an image file"),
        ("photo", ",".join(f"c{i}" for i in range(MAX_DEMO_LABELS + 1)), f"At most {MAX_DEMO_LABELS} classes"),
        ("photo", "cat, Cat", "tokenize identically"),
    ],
)
def test_bad_input_is_a_readable_error(pipe, fixtures, tmp_path, image, classes, message):
    paths = {"photo": str(fixtures / "voc" / "JPEGImages" / "2011_000025.jpg"), "text": str(tmp_path / "a.png")}
    Path(paths["text"]).write_text("not an image")
    with pytest.raises(DemoError, match=message):
        segment_image(pipe, paths.get(image), classes, "seed", 3, 1.0, 0.2, 0.0)
    assert read_classes("road, sky|clouds") == ["road", "sky|clouds"]
    assert all(Path(path).is_file() for path, _ in EXAMPLES)


@pytest.fixture
def served(pipe):
    """The demo on a free local port; yields its URL."""
    port = free_port()
    demo = build_demo(pipe, concurrency=2)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_demo_in_a_real_browser(served, fixtures, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo = fixtures / "voc" / "JPEGImages" / "2011_000025.jpg"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served, wait_until="networkidle")
        page.locator("input[type=file]").first.set_input_files(str(photo))
        classes = page.get_by_label("Classes")
        classes.fill("bus, car, road|street")
        page.get_by_role("button", name="Segment", exact=True).click()
        table = page.locator("#classes-table")
        expect(table).to_contain_text("share", timeout=60000)
        expect(table).to_contain_text("%", timeout=60000)
        for name in ("bus", "car", "road"):
            expect(table).to_contain_text(name, timeout=60000)
        expect(page.locator("#overlay img")).to_have_count(1, timeout=60000)
        expect(page.locator("#masks img").first).to_be_visible(timeout=60000)
        # the overlay is the photo with a legend column beside it, whose first row is below Gradio's buttons
        overlay = Image.open(io.BytesIO(page.request.get(page.locator("#overlay img").get_attribute("src")).body()))
        assert overlay.height == 375 and overlay.width > 500
        shown = page.locator("#overlay img").bounding_box()
        buttons = page.locator("#overlay .icon-button-wrapper").bounding_box()
        line = int(max(12, min(32, 375 // 30)) * 1.6)  # visualize.overlay_image's row height for this photo
        first_row = shown["y"] + 2 * line * shown["height"] / overlay.height
        assert first_row >= buttons["y"] + buttons["height"], (first_row, buttons)
        page.screenshot(path=tmp_path / "demo.png", full_page=True)
        assert Image.open(tmp_path / "demo.png").width >= 800
        png_link = page.locator("#label-file a[href$='labels.png']")
        json_link = page.locator("#json-file a[href$='summary.json']")
        expect(png_link).to_have_count(1, timeout=60000)
        expect(json_link).to_have_count(1, timeout=60000)
        assert page.request.get(png_link.get_attribute("href")).body()[:8] == b"\x89PNG\r\n\x1a\n"
        summary = json.loads(page.request.get(json_link.get_attribute("href")).body())
        assert summary["labels"] == ["bus", "car", "road"] and summary["width"] == 500
        # bad input: a readable message in the page, the last results cleared, and the app keeps serving
        classes.fill(" ")
        page.get_by_role("button", name="Segment", exact=True).click()
        expect(page.get_by_text("Give at least one class name")).to_be_visible(timeout=60000)
        expect(table).not_to_contain_text("share", timeout=60000)
        expect(page.locator("#overlay img")).to_have_count(0, timeout=60000)
        assert "Traceback" not in page.content()
        # a file that is not an image, although named .jpg: Gradio cannot decode it; the page says what is wrong
        fake = tmp_path / "x.jpg"
        fake.write_text("this is not a picture")
        page.locator("input[type=file]").first.set_input_files(str(fake))
        classes.fill("bus, sky")
        page.get_by_role("button", name="Segment", exact=True).click()
        expect(page.get_by_text("x.jpg is not an image file")).to_be_visible(timeout=60000)
        expect(table).not_to_contain_text("share", timeout=60000)
        page.locator("input[type=file]").first.set_input_files(str(photo))
        classes.fill("bus, sky")
        page.get_by_role("button", name="Segment", exact=True).click()
        expect(table).to_contain_text("sky", timeout=60000)
        # the compare tab runs two methods on the same image and classes
        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.locator("#overlay-a img")).to_have_count(1, timeout=60000)
        expect(page.locator("#overlay-b img")).to_have_count(1, timeout=60000)
        browser.close()


def test_api_errors_are_readable(served, fixtures, tmp_path):
    """Through the API (gradio_client) a bad upload or bad classes give the page's message, not Gradio's "has not
    enabled verbose error reporting"."""
    from gradio_client import Client, handle_file

    fake = tmp_path / "x.jpg"
    fake.write_text("this is not a picture")
    client = Client(served, verbose=False, download_files=str(tmp_path), analytics_enabled=False)
    with pytest.raises(Exception, match="x.jpg is not an image file"):
        client.predict(handle_file(str(fake)), "road, sky", "seed", 3, 1.0, 0.2, 0.0, api_name="/segment")
    photo = fixtures / "voc" / "JPEGImages" / "2011_000025.jpg"
    with pytest.raises(Exception, match="Give at least one class name"):
        client.predict(handle_file(str(photo)), " ", "seed", 3, 1.0, 0.2, 0.0, api_name="/segment")


def test_sixteen_concurrent_api_requests(served, pipe, fixtures, tmp_path):
    """16 requests at once through ``gradio_client``, each with its own classes: every answer is its own
    request's segmentation (labels and label map equal to a direct pipeline call)."""
    from gradio_client import Client, handle_file

    photo = fixtures / "voc" / "JPEGImages" / "2011_000025.jpg"
    names = ["bus", "car", "road", "tree", "sky", "person", "building", "bicycle", "grass", "wall"]
    class_lists = [[names[i % 10], names[(i + 3) % 10], f"{names[(i + 7) % 10]}|thing {i}"] for i in range(16)]
    client = Client(served, verbose=False, download_files=str(tmp_path), analytics_enabled=False)
    jobs = [
        client.submit(handle_file(str(photo)), ", ".join(classes), "seed", 3, 1.0, 0.2, 0.0, api_name="/segment")
        for classes in class_lists
    ]
    for classes, job in zip(class_lists, jobs, strict=True):
        _, _, table, label_file, json_file = job.result(timeout=120)
        labels = [item.split("|")[0] for item in classes]
        assert json.loads(Path(json_file).read_text())["labels"] == labels
        assert all(f"| {name} |" in table for name in labels)
        expected = pipe(str(photo), candidate_labels=classes, method="seed", outlier_top_k=3, similarity_weight=1.0,
                        global_debias_factor=0.2, return_label_map=True)["label_map"]  # fmt: skip
        assert np.array_equal(np.array(Image.open(label_file)), expected)
