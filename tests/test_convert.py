"""Checkpoint conversion: OpenAI and OpenCLIP layouts against an independent forward written from the
source layout, architecture inference, clean-process reloads, malformed sources and push --dry-run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hf_ovseg import OVSegModel, OVSegProcessor
from hf_ovseg.cli import main
from hf_ovseg.convert import ARCHS, ClipArch, ConversionError, convert, infer_arch, read_state_dict

from conftest import run_clean_process

TINY = {
    "b16": ClipArch(64, 16, 128, 2, 2, 256, 128, 2, 2, 256, 77, 49408, 64),
    "b32": ClipArch(64, 32, 128, 3, 2, 256, 64, 2, 1, 128, 77, 49408, 32),
}


def openai_state_dict(arch: ClipArch, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in OpenAI CLIP's layout (the names OpenCLIP uses too)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def blocks(prefix, width, mlp, layers):
        out = {}
        for i in range(layers):
            p = f"{prefix}{i}."
            out.update(
                {
                    p + "attn.in_proj_weight": rand(3 * width, width),
                    p + "attn.in_proj_bias": rand(3 * width),
                    p + "attn.out_proj.weight": rand(width, width),
                    p + "attn.out_proj.bias": rand(width),
                    p + "ln_1.weight": 1 + rand(width),
                    p + "ln_1.bias": rand(width),
                    p + "ln_2.weight": 1 + rand(width),
                    p + "ln_2.bias": rand(width),
                    p + "mlp.c_fc.weight": rand(mlp, width),
                    p + "mlp.c_fc.bias": rand(mlp),
                    p + "mlp.c_proj.weight": rand(width, mlp),
                    p + "mlp.c_proj.bias": rand(width),
                }
            )
        return out

    grid = arch.image_size // arch.patch_size
    vw, tw = arch.vision_width, arch.text_width
    state = {
        "visual.class_embedding": rand(vw, scale=0.5),
        "visual.positional_embedding": rand(grid * grid + 1, vw, scale=0.5),
        "visual.conv1.weight": rand(vw, 3, arch.patch_size, arch.patch_size),
        "visual.ln_pre.weight": 1 + rand(vw),
        "visual.ln_pre.bias": rand(vw),
        "visual.ln_post.weight": 1 + rand(vw),
        "visual.ln_post.bias": rand(vw),
        "visual.proj": rand(vw, arch.projection_dim),
        "token_embedding.weight": rand(arch.vocab_size, tw, scale=0.5),
        "positional_embedding": rand(arch.context_length, tw, scale=0.5),
        "ln_final.weight": 1 + rand(tw),
        "ln_final.bias": rand(tw),
        "text_projection": rand(tw, arch.projection_dim),
        "logit_scale": torch.tensor(4.6052),
    }
    state.update(blocks("visual.transformer.resblocks.", vw, arch.vision_mlp, arch.vision_layers))
    state.update(blocks("transformer.resblocks.", tw, arch.text_mlp, arch.text_layers))
    return state


def _resblocks(x, sd, prefix, layers, heads, act, mask=None):
    for i in range(layers):
        p = f"{prefix}{i}."
        y = F.layer_norm(x, x.shape[-1:], sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        qkv = F.linear(y, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"])
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in qkv.chunk(3, -1))
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if mask is not None:
            logits = logits + mask
        a = (logits.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + F.linear(a, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
        y = F.layer_norm(x, x.shape[-1:], sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.linear(y, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h) if act == "quick_gelu" else F.gelu(h)
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return x


def reference_image_embeds(sd, arch, act, pixels):
    sd = {k: v.double() for k, v in sd.items()}
    x = F.conv2d(pixels.double(), sd["visual.conv1.weight"], stride=arch.patch_size).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _resblocks(x, sd, "visual.transformer.resblocks.", arch.vision_layers, arch.vision_heads, act)
    cls = F.layer_norm(x[:, 0], x.shape[-1:], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return cls @ sd["visual.proj"]


def reference_text_embeds(sd, arch, act, ids):
    sd = {k: v.double() for k, v in sd.items()}
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1).double()
    x = _resblocks(x, sd, "transformer.resblocks.", arch.text_layers, arch.text_heads, act, mask)
    x = F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]


def traced_archive(state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive whose state_dict is ``state``, like OpenAI's released ``ViT-B-16.pt``."""

    class Root(torch.nn.Module):
        def forward(self, x):
            return x

    root = Root()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, torch.nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value)
    torch.jit.trace(root, torch.zeros(1)).save(str(path))


def write_source(kind: str, state: dict, folder: Path) -> Path:
    if kind == "openai-pt":
        path = folder / "ViT-tiny.pt"
        torch.save({**state, "input_resolution": torch.tensor(64), "context_length": torch.tensor(77)}, path)
    elif kind == "openai-torchscript":
        path = folder / "ViT-tiny-jit.pt"
        traced_archive({**state, "input_resolution": torch.tensor(64)}, path)
    elif kind == "openclip-wrapped-bin":
        path = folder / "open_clip_pytorch_model.bin"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        path = folder / "open_clip_model.safetensors"
        save_file(state, path)
    return path


SOURCES = {
    "openai-pt": ("quick_gelu", []),
    "openai-torchscript": ("quick_gelu", ["--trust-torchscript"]),
    "openclip-wrapped-bin": ("gelu", []),
    "openclip-safetensors": ("gelu", []),
}


@pytest.mark.parametrize("shape", list(TINY))
@pytest.mark.parametrize("kind", list(SOURCES))
def test_conversion_is_lossless(kind, shape, tmp_path, capsys):
    arch = TINY[shape]
    state = openai_state_dict(arch, seed=len(kind))
    source = write_source(kind, state, tmp_path)
    activation, flags = SOURCES[kind]
    out = tmp_path / "out"
    assert main(["convert", str(source), str(out), *flags]) == 0, capsys.readouterr().err
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "vocab.json", "tokenizer.json"} & files >= {
        "model.safetensors",
        "config.json",
        "README.md",
    }
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_ovseg.OVSegModel"
    assert "zero-shot-image-segmentation" in config["custom_pipelines"]
    assert (
        config["vision_config"]["hidden_act"] == activation and config["vision_config"]["patch_size"] == arch.patch_size
    )

    model = OVSegModel.from_pretrained(out, method="vanilla").eval()
    processor = OVSegProcessor.from_pretrained(out)
    pixels = torch.randn(2, 3, arch.image_size, arch.image_size)
    tokens = processor.tokenizer(
        ["a photo of a cat", "a diagram"], padding="max_length", max_length=77, return_tensors="pt"
    )
    assert tokens["input_ids"][0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    with torch.no_grad():
        image = model.get_dense_image_features(pixels).cls_embeds
        text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    expected_image = reference_image_embeds(state, arch, activation, pixels)
    expected_text = reference_text_embeds(state, arch, activation, tokens["input_ids"])
    torch.testing.assert_close(image.double(), expected_image, rtol=1e-5, atol=1e-5 * expected_image.abs().max())
    torch.testing.assert_close(text.double(), expected_text, rtol=1e-5, atol=1e-5 * expected_text.abs().max())


CHILD = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoModel, pipeline
    for folder in sys.argv[1:]:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules")
        pipe = pipeline("zero-shot-image-segmentation", model=folder, trust_remote_code=True)
        with torch.no_grad():
            logits = model(torch.ones(1, 3, 64, 64), text_embeds=torch.ones(2, model.config.projection_dim)).logits
        torch.save(logits, folder + "/child_logits.pt")
    """
)


def test_every_source_kind_reloads_in_clean_process(tmp_path, capsys):
    folders = []
    for kind, (_, flags) in SOURCES.items():
        source = write_source(kind, openai_state_dict(TINY["b32"]), tmp_path)
        folders.append(str(tmp_path / f"out-{kind}"))
        assert main(["convert", str(source), folders[-1], *flags]) == 0
    run_clean_process(CHILD, folders, tmp_path)
    for folder in folders:
        with torch.no_grad():
            ours = OVSegModel.from_pretrained(folder).eval()(torch.ones(1, 3, 64, 64), text_embeds=torch.ones(2, 32))
        assert torch.equal(torch.load(Path(folder) / "child_logits.pt"), ours.logits)


def test_hf_clip_folder_source(tmp_path):
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from hf_ovseg.tokenizer_files import build_clip_tokenizer

    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 3,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=16,
        )
    )
    source = tmp_path / "clip"
    clip.save_pretrained(source)
    build_clip_tokenizer().save_pretrained(source)
    CLIPImageProcessorPil().save_pretrained(source)
    out = convert(str(source), tmp_path / "out", method="naclip")
    model = OVSegModel.from_pretrained(out)
    assert model.config.method == "naclip"
    for name, tensor in clip.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-segmentation\nlicense: other\n")
    assert "| `attention_mode` | `naclip` |" in card and "<!-- hf-ovseg:eval:start -->" in card


def _meta(arch: ClipArch) -> dict[str, torch.Tensor]:
    grid = arch.image_size // arch.patch_size
    vw, tw, p = arch.vision_width, arch.text_width, arch.projection_dim
    state = {
        "visual.conv1.weight": torch.empty(vw, 3, arch.patch_size, arch.patch_size, device="meta"),
        "visual.class_embedding": torch.empty(vw, device="meta"),
        "visual.positional_embedding": torch.empty(grid * grid + 1, vw, device="meta"),
        "visual.ln_pre.weight": torch.empty(vw, device="meta"),
        "visual.ln_post.weight": torch.empty(vw, device="meta"),
        "visual.proj": torch.empty(vw, p, device="meta"),
        "token_embedding.weight": torch.empty(arch.vocab_size, tw, device="meta"),
        "positional_embedding": torch.empty(arch.context_length, tw, device="meta"),
        "ln_final.weight": torch.empty(tw, device="meta"),
        "text_projection": torch.empty(tw, p, device="meta"),
    }
    for i in range(arch.vision_layers):
        state[f"visual.transformer.resblocks.{i}.mlp.c_fc.weight"] = torch.empty(arch.vision_mlp, vw, device="meta")
    for i in range(arch.text_layers):
        state[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = torch.empty(arch.text_mlp, tw, device="meta")
    return state


@pytest.mark.parametrize("name", list(ARCHS))
def test_architecture_inference_on_every_supported_shape(name):
    arch = ARCHS[name]
    assert infer_arch(_meta(arch), arch.activation) == arch


def test_tiny_shapes_inferred():
    for arch in TINY.values():
        assert infer_arch(_meta(arch)) == arch


def test_malformed_sources_give_clear_errors(tmp_path):
    good = write_source("openai-pt", openai_state_dict(TINY["b32"]), tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConversionError, match="truncated.pt: the file is truncated, corrupt or not a checkpoint"):
        read_state_dict(truncated)
    unrelated = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "conv.weight": torch.zeros(1)}, unrelated)
    with pytest.raises(
        ConversionError, match=r"not a CLIP ViT checkpoint: missing visual.conv1.weight, .*text_projection"
    ):
        convert(str(unrelated), tmp_path / "o1")
    state = openai_state_dict(TINY["b32"])
    state["text_projection"] = torch.zeros(TINY["b32"].text_width, 48)
    mismatched = tmp_path / "mismatched.safetensors"
    save_file(state, mismatched)
    with pytest.raises(
        ConversionError, match="towers do not match: visual.proj projects to 32 dimensions but text_projection to 48"
    ):
        convert(str(mismatched), tmp_path / "o2")
    archive = tmp_path / "jit.pt"
    traced_archive(openai_state_dict(TINY["b32"]), archive)
    with pytest.raises(ConversionError, match="TorchScript archive; .* pass --trust-torchscript"):
        convert(str(archive), tmp_path / "o3")
    with pytest.raises(ConversionError, match="unknown --arch 'ViT-Q-9'"):
        convert(str(good), tmp_path / "o4", arch="ViT-Q-9")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_convert_cli_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt: the file is truncated, corrupt or not a checkpoint" in err[0]


def test_push_dry_run_lists_files(tiny_folder, tmp_path, capsys):
    folder = tmp_path / "model"
    convert(str(write_source("openai-pt", openai_state_dict(TINY["b32"]), tmp_path)), folder)
    assert main(["push", str(folder), "me/ovseg-tiny", "--private", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "README.md" in out and "private repo me/ovseg-tiny" in out
    assert main(["push", str(tiny_folder), "me/x", "--dry-run"]) == 2  # no README.md: not converted
    assert "missing README.md" in capsys.readouterr().err


def test_push_offline_error(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    convert(str(write_source("openai-pt", openai_state_dict(TINY["b32"]), tmp_path)), folder)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["push", str(folder), "me/ovseg-tiny"]) == 2
    err = capsys.readouterr().err
    assert "cannot push to me/ovseg-tiny" in err and "hf auth login" in err
