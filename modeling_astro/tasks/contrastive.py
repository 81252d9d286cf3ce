"""Contrastive fine-tuning: align the embeddings of two views of the same star (e.g. spectra and labels).

The encoder is trained with the symmetric InfoNCE loss (CLIP-style) on the mean-pooled encoder states of the
two views: in a batch of B stars, view A of star i must be most similar to view B of star i among the B
candidates. Only the value embedding and the encoder change; the decoder and head are left as they are,
so predictions drift as the encoder moves (the embedding table is shared with the decoder's requests).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..observations import LABEL_PROMPT
from .labels import SPECTRA_INPUTS, select_inputs

LABELS_VIEW = LABEL_PROMPT  # the second view: the labels and the extinction
"""The labels-only view: APOGEE-like labels and extinction."""


def pooled_embedding(model, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """Differentiable per-star embedding (B, hidden): encoder states averaged over the star's observations,
    as ``AstroPredictor.embed(pooling="mean")`` computes them."""
    return model.pooled_embedding(features["input_ids"], features["input_values"], features["attention_mask"])


def info_nce_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE loss of two (B, D) batches whose rows i are views of the same star."""
    a = torch.nn.functional.normalize(view_a, dim=1)
    b = torch.nn.functional.normalize(view_b, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    cross_entropy = torch.nn.functional.cross_entropy
    return 0.5 * (cross_entropy(logits, target) + cross_entropy(logits.T, target))


def contrastive_finetune(
    model,
    tokenizer,
    data: Any,
    view_a: tuple[str, ...] | list[str] = SPECTRA_INPUTS,
    view_b: tuple[str, ...] | list[str] = LABELS_VIEW,
    steps: int = 200,
    batch_size: int = 256,
    learning_rate: float = 3e-4,
    temperature: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Fine-tune ``model``'s encoder in place so that views ``view_a`` and ``view_b`` of a star embed alike.

    Args:
        model: an ``AstroForObservationPrediction`` (left in eval mode afterwards).
        tokenizer: its ``AstroFeatureExtractor``.
        data: stars (dict / DataFrame / Table / datasets batch); only stars with at least one observation
            in each view are used.
        view_a, view_b: the observation names of the two views.
        steps, batch_size, learning_rate, temperature, seed: optimisation settings (AdamW).
        progress: show a tqdm progress bar.

    Returns:
        The loss of every step.
    """
    features = [
        tokenizer(select_inputs(data, view), observation_names=None, truncation=True, return_tensors="pt")
        for view in (view_a, view_b)
    ]
    both = (features[0]["attention_mask"].sum(1) > 0) & (features[1]["attention_mask"].sum(1) > 0)
    usable = torch.nonzero(both).squeeze(1)
    if len(usable) < 2:
        raise ValueError(
            f"Contrastive fine-tuning needs at least 2 stars with both views; found {len(usable)}."
        )
    device = next(model.parameters()).device
    features = [{key: value[usable].to(device) for key, value in view.items()} for view in features]
    trainable = model.encoder_parameters()
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    try:
        for _ in tqdm(range(steps), desc="contrastive fine-tuning", disable=not progress):
            batch = torch.randperm(len(usable), generator=generator)[:batch_size].to(device)
            embeddings = [pooled_embedding(model, _trimmed(view, batch)) for view in features]
            loss = info_nce_loss(*embeddings, temperature=temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        model.eval()
    return losses


def _trimmed(features: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of a tokenised view, cut to the longest star among them."""
    length = int(features["attention_mask"][rows].sum(1).max())
    return {key: value[rows, :length] for key, value in features.items()}


__all__ = ["LABELS_VIEW", "contrastive_finetune", "info_nce_loss", "pooled_embedding"]
