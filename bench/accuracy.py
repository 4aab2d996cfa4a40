"""Accuracy per engine and language: the corpus' documents with ground truth.

Every corpus document with `NAME.gt.txt` beside it (tasks/lifecycle/eval_sets.py, as
`submit.py eval` finds them) is sent through the queue to one Procfile worker
(tesseract, which also serves rapidocr's queue), once per engine, read afresh, one job
at a time (`tasks.cli.evaluate.read_document`, as `submit.py eval` reads it), and
scored with the service's metric (tasks/evaluation/scoring.py). The table gives, per
engine and document language, the total edits over the total ground-truth characters
(CER) and words (WER), and the seconds. tesseract reads with `lang=auto` (the
default); rapidocr reads what it reads (Chinese and English) and is scored on the
rest too, which shows what it costs to send it other scripts. Born-digital PDFs keep
their text layers (mode auto) whichever engine is asked: their rows measure the text
layer, not the engine. The encrypted PDF is left out (it needs its password).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench.common import CORPUS, Context, Report, Services, Table, manifest

ENGINES = ("tesseract", "rapidocr")
# The corpus' documents whose language is not English, by name.
LANGUAGES = {"lang_vie_page.png": "vie", "lang_ell_page.png": "ell",
             "lang_chi_sim_page.jpg": "chi_sim", "lang_mixed_2p.pdf": "ell+vie",
             "lang_fra_pangram.pdf": "fra", "dig_geotopo_117p.pdf": "deu"}
LEFT_OUT = ("edge_encrypted_pw_openpassword.pdf",)
# A document whose ground truth is its own text layer (MANIFEST.tsv's gt_quality): its
# rows measure the PDF's text, kept whichever engine is asked, not an engine.
TEXT_LAYER_TRUTH = ("text layer", "OCR layer", "expected extraction")


def run(ctx: Context) -> Report:
    from tasks.cli.evaluate import read_document
    from tasks.lifecycle.eval_sets import eval_documents

    report = Report("accuracy")
    with Services(ctx.workdir) as services, \
            services.stack(OCR_CONCURRENCY="2") as (_, client):
        documents = [d for d in eval_documents(str(CORPUS), client.settings)
                     if d.name not in LEFT_OUT]
        if ctx.quick:
            documents = [d for d in documents if d.name.startswith("scan_tess")]
        reads = [read_document(client, document, engine, {}, 900)
                 for engine in ENGINES for document in documents]
    report.tables += tables([r.to_json() for r in reads])
    report.data["reads"] = [r.to_json() for r in reads]
    return report


def read_by(name: str, found: dict[str, dict[str, str]]) -> str:
    """`OCR`, or `text layer` where the ground truth is the PDF's own text layer."""
    quality = found.get(name, {}).get("gt_quality", "")
    return "text layer" if any(word in quality for word in TEXT_LAYER_TRUTH) else "OCR"


def tables(records: list[dict[str, Any]]) -> list[Table]:
    """The table per engine, language and source, and the one per document."""
    found = manifest()
    per_doc = Table("accuracy per document (CER, WER: edits / ground-truth length)",
                    ("engine", "document", "language", "read by", "chars", "CER %",
                     "WER %", "seconds", "error"))
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        name = record["document"]
        language, source = LANGUAGES.get(name, "eng"), read_by(name, found)
        groups[(record["engine"], source, language)].append(record)
        per_doc.rows.append((record["engine"], name, language, source, record["chars"],
                             _percent(record["cer"]), _percent(record["wer"]),
                             record["seconds"], str(record.get("error", "")).split(":")[0]))
    table = Table("accuracy per engine and language (pooled over the documents)",
                  ("engine", "read by", "language", "documents", "chars", "CER %", "WER %",
                   "seconds"))
    for (engine, source, language), group in sorted(groups.items()):
        chars = sum(r["chars"] for r in group)
        words = sum(r["words"] for r in group)
        char_edits = sum((r["cer"] or 0) * r["chars"] for r in group)
        word_edits = sum((r["wer"] or 0) * r["words"] for r in group)
        table.rows.append((engine, source, language, len(group), chars,
                           _percent(char_edits / chars if chars else 0.0),
                           _percent(word_edits / words if words else 0.0),
                           round(sum(r["seconds"] for r in group), 1)))
    return [table, per_doc]


def _percent(rate: float | None) -> float | None:
    return None if rate is None else round(100 * rate, 2)
