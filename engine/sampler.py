"""Picking the next token from a row of logits, in the order of llama.cpp's sampler chain.

repeat penalty -> top-k -> top-p -> min-p -> temperature -> a draw from the distribution, or
the argmax at temperature 0 (after the penalty, as llama.cpp's greedy chain does). Each step
narrows a candidate set of (token id, logit) pairs, so nothing touches the whole vocabulary
after top-k. A `Sampler` owns its random generator: the same seed gives the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.backend import SamplingParams


def apply_repeat_penalty(logits: np.ndarray, history: Sequence[int], penalty: float) -> None:
    """Make the tokens in `history` less likely, in place: positive logits divided, others multiplied."""
    if penalty == 1.0 or not len(history):
        return
    ids = np.unique(np.asarray(history, dtype=np.int64))
    vals = logits[ids]
    logits[ids] = np.where(vals <= 0, vals * penalty, vals / penalty)


def token_logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """log softmax(logits)[token] and the `top` most likely (token, logprob), best first, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    finite = np.isfinite(x)
    m = x[finite].max() if finite.any() else 0.0
    lse = m + np.log(np.exp(x[finite] - m).sum())
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = np.argpartition(-x, min(top, x.shape[0]) - 1)[:top]
        ids = ids[np.argsort(-x[ids], kind="stable")]
        best = tuple((int(i), float(x[i] - lse)) for i in ids)
    return float(x[token] - lse), best


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float64)
    return e / e.sum()


class Sampler:
    """The sampler chain for one generation; call `sample` once per step."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """The next token given one row of logits (n_vocab,) and the tokens so far."""
        p = self.params
        x = np.array(logits, dtype=np.float32)
        if p.repeat_penalty != 1.0:
            apply_repeat_penalty(x, history[-p.repeat_last_n:] if p.repeat_last_n > 0 else history, p.repeat_penalty)
        if p.temperature <= 0:
            return int(np.argmax(x))
        ids = np.arange(x.shape[0])
        if 0 < p.top_k < x.shape[0]:
            ids = np.argpartition(-x, p.top_k - 1)[: p.top_k]
        ids = ids[np.argsort(-x[ids], kind="stable")]  # candidates, most likely first
        vals = x[ids]
        if p.top_p < 1.0:
            cum = np.cumsum(_softmax(vals))
            keep = int(np.searchsorted(cum, p.top_p) + 1)
            ids, vals = ids[:keep], vals[:keep]
        if p.min_p > 0.0:
            keep = vals >= vals[0] + np.log(p.min_p)
            ids, vals = ids[keep], vals[keep]
        probs = _softmax(vals / p.temperature)
        return int(ids[self.rng.choice(len(ids), p=probs)])
