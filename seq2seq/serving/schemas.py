"""Request and response bodies of the three APIs: the schemas FastAPI shows at /docs.

Responses are built as plain dicts in `app.py` (serializing through these models would
cost time on every request); the models here document their exact shape.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MODEL_FIELD = "a model `name` from /health (default: the first --checkpoint)"


class TranslateRequest(BaseModel):
    """`POST /v1/translate`: the project's own API. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | list[str] = Field(
        description=(
            "a string (split into lines) or a list of lines; one translation per line, "
            "blank lines kept"
        ),
        examples=["A dog runs on the beach.\nTwo men are talking."],
    )
    beam_size: int | None = Field(
        None, ge=1, description="1: greedy search; default: the server's --beam-size"
    )
    n_best: int | None = Field(
        None, ge=1, description="hypotheses per line, best first (at most beam_size); default 1"
    )
    alpha: float | None = Field(
        None, ge=0, description="GNMT length penalty; default: the server's --alpha"
    )
    beta: float | None = Field(
        None, ge=0, description="GNMT coverage penalty; default: the server's --beta"
    )
    attention: bool = Field(False, description="include each hypothesis's attention weights")
    model: str | None = Field(None, description=MODEL_FIELD)


class Hypothesis(BaseModel):
    text: str
    score: float = Field(description="log-probability (natural log, the final eos included)")
    target_tokens: list[str] = Field(description="the SentencePiece pieces written, then </s>")
    attention: list[list[float]] | None = Field(
        None, description="target_tokens × source_tokens weights, rows summing to 1 (when asked)"
    )


class LineTranslation(Hypothesis):
    """The best hypothesis of one line, its source pieces and the n-best list."""

    score: float | None = Field(
        description="log-probability of the best hypothesis; null for a blank line"
    )
    truncated: bool = Field(
        description=(
            "the line was longer than the model reads (127 pieces): "
            "only its beginning was translated"
        )
    )
    source_tokens: list[str] = Field(description="the SentencePiece pieces read, then </s>")
    n_best: list[Hypothesis]


class SearchInfo(BaseModel):
    beam_size: int
    n_best: int
    alpha: float
    beta: float


class ModelInfo(BaseModel):
    name: str = Field(description="the run folder of its checkpoint")
    id: int = Field(
        description="its position among the --checkpoint options, from 0 (OpenNMT-py's model id)"
    )
    source_language: str
    target_language: str
    corpus: str
    precision: str
    search: SearchInfo = Field(description="the search used when a request does not say")


class TranslateResponse(BaseModel):
    translations: list[LineTranslation]
    model: ModelInfo


class ErrorResponse(BaseModel):
    error: str = Field(
        description="what was wrong, naming the field and the limit",
        examples=["field 'beam_size': at most 16"],
    )


class LibreTranslateRequest(BaseModel):
    """`POST /translate`, as LibreTranslate takes it (JSON or a form)."""

    model_config = ConfigDict(extra="ignore")

    q: str | list[str] = Field(description="text to translate; newlines are kept")
    source: str = Field(
        description="source language code, or `auto` for the model's source language"
    )
    target: str = Field(description="target language code")
    format: str = Field("text", description="`text` only: HTML tags are not carried through")
    alternatives: int = Field(0, ge=0, description="extra translations from the beam, best first")
    api_key: str | None = None


class LibreTranslateResponse(BaseModel):
    translatedText: str | list[str]
    alternatives: list[str] | list[list[str]] | None = None


class Language(BaseModel):
    code: str
    name: str
    targets: list[str]


class OpenNMTRequestItem(BaseModel):
    """One item of `POST /translator/translate`, as OpenNMT-py's server takes it."""

    model_config = ConfigDict(extra="ignore")

    src: str = Field(description="one sentence")
    id: int | None = Field(None, description="the model id (see /health); default: the first model")


class OpenNMTResult(BaseModel):
    src: str
    tgt: str
    n_best: int
    pred_score: float | None = Field(description="log-probability; null for a blank sentence")


class PublicLimits(BaseModel):
    max_lines: int = Field(description="lines in one request")
    max_line_characters: int = Field(description="characters in one line")
    max_beam_size: int = Field(description="widest beam a request may ask for")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    models: list[ModelInfo]
    queue_lines: int = Field(description="lines waiting for a worker, all models together")
    limits: PublicLimits
