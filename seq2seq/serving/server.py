"""`seq2seq serve`: load the models, then open the port; stop gracefully on SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import uvicorn

from seq2seq.core.search import SearchSettings
from seq2seq.serving.app import create_app
from seq2seq.serving.limits import ServeLimits
from seq2seq.serving.models import load_models

log = logging.getLogger("seq2seq.serve")


def serve(
    checkpoints: Sequence[str | Path],
    *,
    host: str,
    port: int,
    api_key: str | None,
    search: SearchSettings,
    precision: str,
    limits: ServeLimits,
    device: str | None,
    workers: int | None,
    shortlist: bool,
    access_log: bool,
) -> None:
    """Serve until stopped. The models load before the port opens, so a client that can
    connect gets translations; on shutdown, requests already received are answered first.

    Every setting comes from `seq2seq serve`'s options, whose defaults are the only ones."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(limits.translation_threads())
    models = load_models(checkpoints, search, precision, limits, device, workers, shortlist)
    for model in models:
        log.info(
            "model %d %r: %s→%s, %s, %d torch threads",
            model.id,
            model.name,
            model.source_language,
            model.target_language,
            model.translator.precision,
            torch.get_num_threads(),
        )
    if limits.batching and any(model.translator.precision == "int8" for model in models):
        log.warning(
            "int8 quantizes each batch's activations together: an answer can depend on the "
            "requests batched with it; use --precision fp32 or bf16 where that matters"
        )
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without --api-key: anyone who can reach it can use it", host)
    app = create_app(models, limits, api_key)
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=access_log,
        log_level="info",
        timeout_graceful_shutdown=int(limits.timeout_seconds) + 1,
        proxy_headers=True,  # behind a reverse proxy: clients' addresses from X-Forwarded-For
    )
