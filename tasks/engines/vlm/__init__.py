"""The vision-language engines and what they share; runs in worker pool children.

- `mlx_vlm_engine`: the `mlx-vlm` engine, the model in the worker (the only mlx import).
- `vlm_api_engine`: the `vlm-api` engine, the model behind an OpenAI-compatible
  inference server (the only openai import).
- `base`: their shared base class (`VlmEngine`), prompt and page/token budget.
- `page_read`: one page's read, whatever runs the model: the temperature ladder,
  olmOCR's re-ask, the page's `vlm` record.
- `profiles`: model profiles (prompt, budget, output format per model family).
- `replies`: a normalised reply (`VlmOutput`), Markdown to text, the generic normaliser.
- `reply_formats`: the per-format normalisers (the only docling-core import).
- `budget`: the size a page goes to the model at (`PatchGrid`, `budget_size`).
- `repetition`: the repetition guard (token ids, and streamed text pieces).
- `word_placement`: the model's words on another engine's word boxes.
- `server_gate`: the vlm-api engine's view of its server (up, or down and watched).
- The one "is the inference server up?" check is `tasks/server_probe.py`, a floor below
  the engines (standard library only: client processes call it through
  tasks/inference_server.py without importing any engine module).
"""
