"""How close decrypted outputs are to the plaintext PANN's."""
from __future__ import annotations

import numpy as np


def compare(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Decrypted ``outputs`` against the plaintext ``reference`` logits (both ``(n, classes)``):
    ``accuracy`` and ``plaintext_accuracy`` against ``labels`` and the ``agreement`` of their
    predicted classes (percent), and ``precision_bits = -log2(max|out - ref| / max|ref|)``."""
    outputs, reference, labels = np.asarray(outputs), np.asarray(reference), np.asarray(labels)
    why = {"reference": "a PANN overflows on inputs far outside its calibrated ranges (a composite activation "
                        "diverges there); recalibrate on representative data or with a larger margin",
           "outputs": "decryption gave no number: check that the keys, the plan and the scale match"}
    for name, values in (("reference", reference), ("outputs", outputs)):
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise ValueError(f"the {name} of samples {bad.tolist()} are not finite: {why[name]}")
    predicted, expected = outputs.argmax(1), reference.argmax(1)
    error = np.abs(outputs - reference).max() / np.abs(reference).max()
    return {"accuracy": float((predicted == labels).mean() * 100),
            "plaintext_accuracy": float((expected == labels).mean() * 100),
            "agreement": float((predicted == expected).mean() * 100),
            "precision_bits": float(-np.log2(error)) if error > 0 else float("inf")}
