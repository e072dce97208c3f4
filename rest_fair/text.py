"""Strings as ``X``: tokenize once, pad each batch to its own longest text.

With ``module="hf:<name or path>"`` :class:`~rest_fair.RESTClassifier` accepts a list or
1-D array of strings. Two hooks keep the training engine unaware of text:
:func:`fit_text_input` (``fit``) and :func:`text_input` (``validation_data``, and
``predict`` with the fitted model's own tokenizer) tokenize every text once, truncated to
``module_params["max_length"]`` and unpadded, into a :class:`TokenizedText`, which ``fit``
indexes like an array (validation split, JTT subsets). :func:`rest_fair._data.make_source`
turns it into a :class:`TextSource`, which yields per batch a dict of ``input_ids`` and
``attention_mask`` padded to the longest text *of that batch* (both classes live in
:mod:`rest_fair._data`). Texts are single segments, so no ``token_type_ids`` are produced:
BERT-style models use segment 0 for every token.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from ._data import TextSource, TokenizedText
from ._validation import BAD_LENGTH
from .backbones import (
    HF_PREFIX,
    HFTextClassifier,
    check_hf_params,
    hf_token_limits,
    load_tokenizer,
)

__all__ = [
    "TextSource",
    "TokenizedText",
    "check_text_input",
    "fit_text_input",
    "is_text_input",
    "make_text_source",
    "text_input",
    "tokenize",
    "validate_text_xy",
]

TEXT_NEEDS_HF = (
    "X holds text (strings), which module={module!r} cannot take. Use "
    "module='hf:<model name or local folder>' (a Hugging Face sequence classifier), or turn "
    "the text into numbers first (e.g. sklearn's TfidfVectorizer in a Pipeline)."
)
HF_NEEDS_TEXT = (
    "module={module!r} is a text model and takes X as a list or 1-D array of strings; got {what}."
)
NOT_FITTED_ON_TEXT = (
    "This RESTClassifier was fitted on numeric input; it cannot predict from text (strings or "
    "a TokenizedText)."
)
BAD_BYTES = "X holds bytes that are not UTF-8 text at element {index} ({error})."
BAD_TEXT = "X must be a list or 1-D array of strings; element {index} is {type}."
NOT_UNICODE = (
    "X holds a string that is not Unicode text at element {index} ({error}); the tokenizer "
    "reads UTF-8, which has no lone surrogates (they come from bytes decoded with "
    "errors='surrogateescape', or from JSON escapes such as \\udcff)."
)
EMPTY_TEXT = "X is an empty list of strings; there is no sample to fit or predict."
TOKEN_BEYOND_VOCAB = (
    "X (a TokenizedText) holds token id {id} in text {index}, but {module!r} embeds ids 0 to "
    "{last} only; tokenize X with this model's tokenizer."
)
PAD_BEYOND_VOCAB = (
    "X (a TokenizedText) pads with token id {id}, but {module!r} embeds ids 0 to {last} only; "
    "tokenize X with this model's tokenizer."
)
TOKENS_TOO_LONG = (
    "X (a TokenizedText) has {n} tokens in text {index}, more than {module!r} can read: its "
    "position embeddings take {positions} tokens. Truncate the texts when tokenizing."
)
TOO_SHORT_TO_TRUNCATE = (
    "max_length={limit} is too short for the tokenizer, which adds {special} special tokens to "
    "every text: text {index} stays {n} tokens long instead of being truncated. Give a "
    "max_length of at least {special}."
)
_MAKE_TEXT_SOURCE = (
    "make_text_source is deprecated and will be removed in a future release: "
    "rest_fair._data.make_source makes the TextSource of a TokenizedText itself."
)
_DEFAULT_MAX_LENGTH = 512
_CHUNK = 4096


def _is_hf(module: Any) -> bool:
    return isinstance(module, str) and module.startswith(HF_PREFIX)


def is_text_input(X: Any) -> bool:
    """Whether ``X`` is text: a :class:`TokenizedText` or a 1-D sequence of strings."""
    if isinstance(X, TokenizedText):
        return True
    if not isinstance(X, (list, tuple)):  # a str has no ndim: not text
        dtype = getattr(X, "dtype", None)
        if getattr(X, "ndim", None) != 1 or dtype is None:
            return False
        kind = getattr(dtype, "kind", None)
        if kind in ("U", "S"):
            return True
        if kind != "O" and str(dtype) not in ("string", "str"):
            return False
        X = X.tolist() if hasattr(X, "tolist") else list(X)
    return len(X) > 0 and all(isinstance(v, (str, bytes)) for v in X)


def _texts(X: Any) -> list[str]:
    values = X.tolist() if hasattr(X, "tolist") else list(X)
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                values[i] = v.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(BAD_BYTES.format(index=i, error=exc)) from exc
        elif not isinstance(v, str):
            raise ValueError(BAD_TEXT.format(index=i, type=type(v).__name__))
    return values


def _max_length(tokenizer: Any, max_length: int | None) -> int:
    if max_length is not None:
        return int(max_length)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit <= 100_000:
        return min(limit, _DEFAULT_MAX_LENGTH)
    return _DEFAULT_MAX_LENGTH


def tokenize(texts: Sequence[str], tokenizer: Any, *, max_length: int | None) -> TokenizedText:
    """Tokenize ``texts`` once, truncating each to ``max_length`` tokens (no padding).

    Parameters
    ----------
    texts : sequence of str
    tokenizer : transformers.PreTrainedTokenizerBase
    max_length : int or None
        ``None`` is the tokenizer's ``model_max_length`` (at most 512).

    Returns
    -------
    TokenizedText

    Raises
    ------
    ValueError
        If ``max_length`` is shorter than the special tokens the tokenizer adds to every
        text, which leaves texts untruncated, or if a text holds a lone surrogate (it has
        no UTF-8 form).
    """
    limit = _max_length(tokenizer, max_length)
    pieces: list[np.ndarray] = []
    texts = list(texts)
    for start in range(0, len(texts), _CHUNK):
        chunk = texts[start : start + _CHUNK]
        try:
            encoded = tokenizer(
                chunk, truncation=True, max_length=limit, padding=False,
                return_attention_mask=False, return_token_type_ids=False,
            )["input_ids"]
        except TypeError:  # a fast tokenizer's answer to a text that is not UTF-8
            for index, text in enumerate(chunk, start):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ValueError(NOT_UNICODE.format(index=index, error=exc)) from None
            raise
        pieces += [np.asarray(ids, dtype=np.int32) for ids in encoded]
    lengths = [len(ids) for ids in pieces]
    if lengths and max(lengths) > limit:  # the tokenizer cannot cut below its special tokens
        index = int(np.argmax(np.asarray(lengths) > limit))
        raise ValueError(TOO_SHORT_TO_TRUNCATE.format(
            limit=limit, special=tokenizer.num_special_tokens_to_add(), index=index,
            n=lengths[index]))
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenizedText(ids, offsets, pad_token_id=pad)


def validate_text_xy(X: Any, y: Any, module: Any,
                     module_params: dict | None) -> tuple[TokenizedText, np.ndarray]:
    """``fit``'s input check for text: tokenize ``X`` and check ``y``.

    Parameters
    ----------
    X : list or 1-D array of str, or TokenizedText
    y : array-like of shape (n_samples,)
    module, module_params
        The estimator's parameters; ``module`` must be ``"hf:..."``.

    Returns
    -------
    (TokenizedText, ndarray)
    """
    tokens = check_text_input(X, module, module_params)  # refuses a module not "hf:..."
    if len(tokens) == 0:
        raise ValueError(EMPTY_TEXT)
    y = column_or_1d(np.asarray(y), warn=True)
    if len(y) != len(tokens):
        raise ValueError(BAD_LENGTH.format(what="y", got=len(y), n=len(tokens)))
    check_classification_targets(y)
    return tokens, y


def check_text_input(X: Any, module: Any, module_params: dict | None = None, *,
                     fitted: Any = None) -> TokenizedText:
    """Tokenize text for ``validation_data`` or (with ``fitted``) for ``predict``.

    While fitting, the tokenizer comes from ``module``; afterwards from the fitted module,
    so a saved estimator tokenizes as it did in training even where the original model
    folder is gone. A :class:`TokenizedText` is returned as it is, once checked against
    the model: every id must be in its vocabulary and no text longer than its position
    embeddings.

    Parameters
    ----------
    X : list or 1-D array of str, or TokenizedText
    module, module_params
        The estimator's parameters.
    fitted : nn.Module, optional
        The fitted module (``module_``), when predicting: an :class:`HFTextClassifier`
        or a module that holds one (:meth:`~rest_fair.RESTClassifier.export_sparse`'s).

    Returns
    -------
    TokenizedText

    Raises
    ------
    ValueError
        If ``fitted`` was not fitted on text, if ``module`` is not a text model, or if a
        :class:`TokenizedText` holds an id beyond the vocabulary or a text beyond the
        positions of the model.
    """
    if fitted is not None:
        # the text model itself, or inside a wrapper (export_sparse's module)
        fitted = next((m for m in fitted.modules() if isinstance(m, HFTextClassifier)), None)
        if fitted is None:
            raise ValueError(NOT_FITTED_ON_TEXT)
        if isinstance(X, TokenizedText):
            _check_tokens(X, fitted.source, *fitted.token_limits())
            return X
        tokenizer, max_length = fitted.tokenizer, fitted.max_length
    else:
        if not _is_hf(module):
            raise ValueError(TEXT_NEEDS_HF.format(
                module=module if isinstance(module, str) else repr(module)))
        params = check_hf_params(module, dict(module_params or {}))
        if isinstance(X, TokenizedText):
            _check_tokens(X, module, *hf_token_limits(module, params))
            return X
        tokenizer, max_length = load_tokenizer(module, params), params["max_length"]
    return tokenize(_texts(X), tokenizer, max_length=max_length)


def _check_tokens(tokens: TokenizedText, module: str, vocab: int | None,
                  positions: int | None) -> None:
    """Raise unless the model embeds every id of ``tokens`` and reads its longest text."""
    if vocab is not None:
        if tokens.pad_token_id >= vocab:
            raise ValueError(PAD_BEYOND_VOCAB.format(id=tokens.pad_token_id, module=module,
                                                     last=vocab - 1))
        beyond = np.flatnonzero(tokens.ids >= vocab)
        if beyond.size:
            index = int(np.searchsorted(tokens.offsets, beyond[0], side="right")) - 1
            raise ValueError(TOKEN_BEYOND_VOCAB.format(id=int(tokens.ids[beyond[0]]), index=index,
                                                       module=module, last=vocab - 1))
    if positions is not None and len(tokens):
        lengths = tokens.lengths
        if lengths.max() > positions:
            index = int(np.argmax(lengths > positions))
            raise ValueError(TOKENS_TOO_LONG.format(n=int(lengths[index]), index=index,
                                                    module=module, positions=positions))


def check_not_text_module(module: Any, X: Any) -> None:
    """Raise if ``module`` is a text model but ``X`` is not text."""
    if _is_hf(module) and not is_text_input(X):
        kind = getattr(getattr(X, "dtype", None), "kind", "")
        if isinstance(X, (list, tuple)) or (getattr(X, "ndim", None) == 1 and kind == "O"):
            if len(X) == 0:
                raise ValueError(EMPTY_TEXT)
            _texts(X)  # names the first element that is not a string
        what = type(X).__name__
        shape = getattr(X, "shape", None)
        raise ValueError(HF_NEEDS_TEXT.format(
            module=module, what=f"{what} of shape {shape}" if shape is not None else what))


# ----------------------------------------------------- hooks called by the training engine
def fit_text_input(X: Any, y: Any, module: Any,
                   module_params: dict | None) -> tuple[TokenizedText, np.ndarray] | None:
    """``fit``: :func:`validate_text_xy` for text input, ``None`` for anything else.

    Raises if ``module`` is a text model but ``X`` is not text.
    """
    if is_text_input(X):
        return validate_text_xy(X, y, module, module_params)
    check_not_text_module(module, X)
    return None


def text_input(X: Any, module: Any, module_params: dict | None = None, *,
               fitted: Any = None) -> TokenizedText | None:
    """``validation_data`` and (with ``fitted``) ``predict``: tokens of text, else ``None``.

    Raises if ``module`` is a text model but ``X`` is not text.
    """
    if is_text_input(X):
        return check_text_input(X, module, module_params, fitted=fitted)
    check_not_text_module(module, X)
    return None


def make_text_source(X: Any) -> TextSource | None:
    """Deprecated: a :class:`TextSource` for a :class:`TokenizedText`, else ``None``."""
    warnings.warn(_MAKE_TEXT_SOURCE, FutureWarning, stacklevel=2)
    return TextSource(X) if isinstance(X, TokenizedText) else None
