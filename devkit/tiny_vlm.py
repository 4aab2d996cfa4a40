"""Tiny random-weight ``qwen2_vl`` model: a test fixture for the mlx-vlm engine.

``build_tiny_qwen2_vl(dest)`` writes, fully offline, a model directory that
``mlx_vlm.load(dest)`` loads from local disk and ``mlx_vlm.generate`` runs on a
small image in well under a second on CPU (the output text is garbage).

MLX deadlocks a forked child once the parent has evaluated an MLX array, so
callers should run the builder in a subprocess::

    python -m devkit.tiny_vlm DEST

All MLX work happens inside the function; importing this module evaluates
nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# The BPE trainer puts special tokens first, so each id is its list index.
TOKEN_ID = {token: i for i, token in enumerate(SPECIAL_TOKENS)}

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Invoice 2024-001: total amount due 1,234.56 EUR.",
    "OCR extracts text from scanned pages and photos.",
    "system user assistant You are a helpful assistant.",
]

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content"
    " or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# 14 px patches merged 2x2: one image token per 28x28 px, 1-4 tokens per image.
IMAGE_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "rescale_factor": 1 / 255,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "min_pixels": 28 * 28,
    "max_pixels": 56 * 56,
    "size": {"shortest_edge": 28 * 28, "longest_edge": 56 * 56},
}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _build_tokenizer(dest: Path, stops: bool = False) -> int:
    """Train a byte-level BPE tokenizer on CORPUS; return its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    for token, token_id in TOKEN_ID.items():
        assert tokenizer.token_to_id(token) == token_id, token
    tokenizer.save(str(dest / "tokenizer.json"))
    _write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": "<|endoftext|>" if stops else "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "model_max_length": 4096,
            "padding_side": "left",
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    return tokenizer.get_vocab_size()


@dataclass(frozen=True)
class Geometry:
    """Sizes of a random-weight model; the defaults make the tiny test model.

    `max_pixels` is the image processor's limit (Qwen2-VL ships 12,845,056: pages are
    not scaled down by the processor); the rest size the networks.
    """

    max_pixels: int = 56 * 56
    hidden: int = 64
    heads: int = 4  # head_dim = hidden / heads; mrope_section sums to head_dim / 2
    layers: int = 2
    intermediate: int = 128
    vision_depth: int = 1
    vision_dim: int = 32
    vision_heads: int = 2
    # True: the model ends every reply at once (its final norm is zero, so every logit
    # is 0 and greedy decoding picks token 0, made the end token): a complete, empty read.
    stops: bool = False


# Qwen2-VL's real image geometry (14 px patches, 2x2 merge, max_pixels 12,845,056) on
# networks small enough for CPU: the tokens a page costs are Qwen2-VL's own.
QWEN2_VL_PAGES = Geometry(max_pixels=12_845_056)
TINY_STOPS = Geometry(stops=True)
# ~113M parameters in the language model (12 layers of 768, MLP 3,072) with Qwen2-VL's
# image geometry and a small vision tower: big enough that generating tokens, not the
# Python around them, dominates a page (bench/vlm_api.py).
BENCH_100M = Geometry(max_pixels=12_845_056, hidden=768, heads=12, layers=12,
                      intermediate=3072)


def _image_processor(geometry: Geometry) -> dict:
    return {**IMAGE_PROCESSOR, "max_pixels": geometry.max_pixels,
            "size": {"shortest_edge": 28 * 28, "longest_edge": geometry.max_pixels}}


def _model_config(vocab_size: int, geometry: Geometry = Geometry()) -> dict:
    hidden, heads = geometry.hidden, geometry.heads
    half = hidden // heads // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_size": hidden,
        "intermediate_size": geometry.intermediate,
        "num_hidden_layers": geometry.layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope},
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "bos_token_id": TOKEN_ID["<|endoftext|>"],
        "eos_token_id": TOKEN_ID["<|endoftext|>" if geometry.stops else "<|im_end|>"],
        "pad_token_id": TOKEN_ID["<|endoftext|>"],
        "vision_start_token_id": TOKEN_ID["<|vision_start|>"],
        "vision_end_token_id": TOKEN_ID["<|vision_end|>"],
        "vision_token_id": TOKEN_ID["<|vision_pad|>"],
        "image_token_id": TOKEN_ID["<|image_pad|>"],
        "video_token_id": TOKEN_ID["<|video_pad|>"],
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": geometry.vision_depth,
            "embed_dim": geometry.vision_dim,
            "num_heads": geometry.vision_heads,
            "mlp_ratio": 2,  # must be an int
            "hidden_size": hidden,  # merger output = text hidden size
            "in_channels": 3,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    }


def build_tiny_qwen2_vl(dest: Path, geometry: Geometry = Geometry()) -> Path:
    """Write a tiny random-weight qwen2_vl model directory into ``dest``."""
    import mlx.core as mx
    from mlx_vlm.models import qwen2_vl
    from mlx_vlm.utils import save_weights

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = _model_config(_build_tokenizer(dest, geometry.stops), geometry)
    _write_json(dest / "config.json", config)
    _write_json(dest / "preprocessor_config.json", _image_processor(geometry))
    # Present locally so the processor never tries hf_hub_download for them.
    _write_json(dest / "video_preprocessor_config.json", _image_processor(geometry))
    _write_json(dest / "processor_config.json", {"processor_class": "Qwen2VLProcessor"})

    mx.random.seed(0)
    model_config = qwen2_vl.ModelConfig.from_dict(json.loads(json.dumps(config)))
    model_config.text_config = qwen2_vl.TextConfig.from_dict(model_config.text_config)
    model_config.vision_config = qwen2_vl.VisionConfig.from_dict(
        config["vision_config"]
    )
    model = qwen2_vl.Model(model_config)
    if geometry.stops:
        norm = model.language_model.model.norm
        norm.weight = mx.zeros_like(norm.weight)
    mx.eval(model.parameters())
    # Writes model.safetensors + index with the same keys load() expects.
    save_weights(dest, model)
    return dest


GEOMETRIES = {"tiny": Geometry(), "qwen2-vl-pages": QWEN2_VL_PAGES, "tiny-stops": TINY_STOPS,
              "bench-100m": BENCH_100M}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m devkit.tiny_vlm DEST [GEOMETRY]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or (len(args) == 2 and args[1] not in GEOMETRIES):
        print(f"usage: python -m devkit.tiny_vlm DEST [{'|'.join(GEOMETRIES)}]",
              file=sys.stderr)
        return 2
    print(build_tiny_qwen2_vl(Path(args[0]), GEOMETRIES[args[1] if len(args) == 2
                                                        else "tiny"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
