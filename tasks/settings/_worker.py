"""Settings of a worker's pool and job limits, stored results, and the bounds of inputs.

Part of `tasks.settings.Settings` (read and validated there); runs in every process.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._field import setting as _s


@dataclass(frozen=True)
class WorkerSettings:
    """Pool and job limits, result and blob lifetimes, input bounds."""

    worker_role: str = _s("OCR_WORKER_ROLE", "ocr",
                          "ocr: a worker that runs OCR with its engine; control: the "
                          "light worker of the Procfile that serves only the "
                          "`ocr-control` queue (cancels, callbacks) and `ocr-batch-steps` "
                          "(batch steps), and loads no engine.")
    concurrency: int = _s("OCR_CONCURRENCY", "0",
                          "Pool children per worker; 0 means one per CPU core, one "
                          "for a worker whose engine is mlx-vlm (each child holds its own "
                          "copy of the model), and OCR_VLM_API_IN_FLIGHT threads for "
                          "vlm-api.")
    max_tasks_per_child: int = _s("OCR_MAX_TASKS_PER_CHILD", "200",
                                  "Recycle a pool child after this many tasks (0: never), each "
                                  "child's limit drawn up to a fifth below it so that "
                                  "children do not recycle at once.")
    max_memory_per_child_mb: int = _s("OCR_MAX_MEMORY_PER_CHILD_MB", "4096",
                                      "Recycle a pool child whose RSS has grown by more "
                                      "than this since its engine loaded (0: never); a "
                                      "thread-pool (vlm-api) worker recycles its process.")
    proc_alive_timeout: float = _s("OCR_PROC_ALIVE_TIMEOUT", "180",
                                   "Seconds a new pool child may take to load its engine.")
    soft_time_limit: int = _s("OCR_SOFT_TIME_LIMIT", "600",
                              "Seconds after which a job ends with code `timeout`.")
    hard_time_limit: int = _s("OCR_HARD_TIME_LIMIT", "660",
                              "Seconds after which the child running a job is killed.")
    max_deliveries: int = _s("OCR_MAX_DELIVERIES", "3",
                             "Runs a job may start before it ends as `worker_lost`, when "
                             "each run killed its worker child (poison jobs).")
    cache_results: bool = _s("OCR_CACHE_RESULTS", "1",
                             "Reuse the stored result of identical input and options.")
    result_ttl: int = _s("OCR_RESULT_TTL", "86400",
                         "Seconds results (and cached results) are kept in Redis.")
    blob_ttl: int = _s("OCR_BLOB_TTL", "86400", "Seconds an uploaded input is kept in Redis.")
    max_input_mb: float = _s("OCR_MAX_INPUT_MB", "64", "Largest accepted input file.")
    max_image_pixels: int = _s("OCR_MAX_IMAGE_PIXELS", "178956970",
                               "Largest decoded image (width*height); larger ones are "
                               "refused as `image_too_large` (decompression bombs).")
    dead_letter_max: int = _s("OCR_DEAD_LETTER_MAX", "1000",
                              "Entries kept in the dead-letter list `ocr:dead-letter` "
                              "(refused broker messages: not decodable, pickled, or too "
                              "large for OCR_MAX_INPUT_MB); older ones are dropped.")
    dead_letter_ttl: int = _s("OCR_DEAD_LETTER_TTL", "604800",
                              "Seconds the dead-letter list lives after its last entry.")
    max_decoded_mb: float = _s("OCR_MAX_DECODED_MB", "1024",
                               "Most memory one image frame may take decoded, estimated "
                               "from its header before decoding; larger ones are refused "
                               "as `image_too_large`. Frames over OCR_MAX_RENDER_PIXELS "
                               "are reduced to it strip by strip (JPEGs decoded reduced, "
                               "8-bit PNGs decoded in strips, never whole).")
    max_pages: int = _s("OCR_MAX_PAGES", "2000", "Most pages one job may have.")

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 1024 * 1024)

    @property
    def max_decoded_bytes(self) -> int:
        return int(self.max_decoded_mb * 1024 * 1024)

    @property
    def max_message_bytes(self) -> int:
        """Largest broker message a worker decodes.

        One carrying an inline input of OCR_MAX_INPUT_MB: base64 inside a base64 body
        makes 16/9 of it, plus 1 MiB for the rest of the message.
        """
        return self.max_input_bytes * 16 // 9 + 2**20
