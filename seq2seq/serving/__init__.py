"""The serving layer: HTTP routes over the inference core (`seq2seq serve`).

    limits.py   ServeLimits: every limit and batching default of the server, defined once
    batcher.py  MicroBatcher: concurrent requests' lines translated together by one worker thread
    models.py   ServedModel: a checkpoint's Translator, its languages and its batcher
    schemas.py  the pydantic request and response models (the OpenAPI schemas at /docs)
    metrics.py  Prometheus counters and histograms (/metrics)
    app.py      the FastAPI application: routes, API key, JSON errors
    server.py   start-up: models loaded before the port opens, graceful shutdown
    loadtest.py the load benchmark behind `seq2seq bench --serve`
    static/     the page at / (plain HTML, CSS and JavaScript; works offline)

No model code lives here, and nothing here imports Lightning.
"""
