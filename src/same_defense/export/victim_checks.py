"""The served victim graph against the data: does it run, batch, answer finite logits, learn?

These checks run on the provider's own test images before anything is trained on the
victim's answers: a wrong preprocessing shows up here as an error or a near-chance warning.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from .onnx_export import session
from .victim_spec import IMAGE, LOGITS

log = logging.getLogger("same.build")


def onnx_logits(path: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run the served victim graph (``IMAGE -> LOGITS``) in onnxruntime, batch by batch."""
    sess = session(path)
    parts = [
        sess.run([LOGITS], {IMAGE: np.ascontiguousarray(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def victim_answers(path: Path, images: np.ndarray) -> np.ndarray:
    """The served graph's logits on ``images``; ValueError if any is NaN or Inf.

    The accuracy and the shadow's training targets both come from here: a NaN among the
    targets would silently turn the shadow's loss into NaN.
    """
    logits = onnx_logits(path, images)
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if bad.size:
        raise ValueError(
            f"the victim answers NaN or Inf on {bad.size} of {len(images)} of the data set's "
            f"images (first: index {bad[0]}); check its preprocessing (with softmax outputs "
            "use --victim-output probs)"
        )
    return logits


def check_victim_graph(path: Path, images: np.ndarray, num_classes: int) -> None:
    """Run the served victim graph on batches of 1 and 3 of the provider's images.

    Catches what would otherwise surface as a Triton error under load, or worse, as a shadow
    trained on nonsense: a graph that does not run, a fixed batch size (Triton batches
    requests), a class count that differs from the data set's, NaN/Inf answers.
    """
    try:
        sess = session(path)
    except Exception as exc:
        raise ValueError(f"onnxruntime cannot load the victim graph {path}: {exc}") from None
    hint = (
        "check --victim-layout, --victim-channel-order and the data set's image size against "
        "what the model expects"
    )
    for n in (1, 3):
        x = np.ascontiguousarray(images[:n])
        try:
            out = sess.run([LOGITS], {IMAGE: x})[0]
        except Exception as exc:
            if n > 1:
                raise ValueError(
                    f"the victim runs on a batch of 1 image but not on a batch of {n}: its batch "
                    f"dimension is not dynamic (Triton batches requests); re-export it with a "
                    f"dynamic batch axis. onnxruntime said: {exc}"
                ) from None
            raise ValueError(
                f"the victim does not run on the data set's images after preprocessing ({hint}). "
                f"onnxruntime said: {exc}"
            ) from None
        if out.ndim == 2 and out.shape[0] != n:
            raise ValueError(
                f"the victim answers {out.shape[0]} rows for a batch of {n}: its batch dimension "
                "is not dynamic; re-export it with a dynamic batch axis"
            )
        if out.shape != (n, num_classes):
            raise ValueError(
                f"the victim's output has shape {list(out.shape)} for a batch of {n}; expected "
                f"[{n}, {num_classes}] for the data set's {num_classes} classes (wrong "
                "--victim-output-name, or a model for other classes?)"
            )
        if not np.isfinite(out).all():
            raise ValueError(
                f"the victim answers NaN or Inf on the data set's images ({hint}; with softmax "
                "outputs use --victim-output probs)"
            )


def chance_warning(accuracy: float, num_classes: int, kind: str = "onnx") -> str | None:
    """A loud message when the test accuracy is near chance, else None.

    A provided model that scores near 1 / classes on its own provider's test images is
    almost always fed the wrong preprocessing (scale, mean/std, channel order) or numbers its
    classes differently, and SAME trained on its answers would protect noise. A victim the
    build trained itself has simply learned too little.
    """
    chance = 1.0 / num_classes
    if accuracy > chance + 0.1 * (1.0 - chance):
        return None
    if kind == "trained":
        cause = "the victim learned little (more --victim-epochs or more training images?)"
    else:
        cause = (
            "the preprocessing is probably wrong (--victim-scale, --victim-mean, --victim-std, "
            "--victim-channel-order, --victim-layout, --victim-output), or the model's class "
            "order differs from the data set's"
        )
    return (
        f"victim test accuracy {accuracy:.4f} is near chance ({chance:.4f} for {num_classes} "
        f"classes): {cause}"
    )


def warn_if_near_chance(accuracy: float, num_classes: int, kind: str = "onnx") -> str | None:
    """Log :func:`chance_warning` in a banner (and raise it as a Python warning) if any."""
    message = chance_warning(accuracy, num_classes, kind)
    if message:
        banner = "!" * 78
        log.warning("%s\nWARNING: %s\n%s", banner, message, banner)
        warnings.warn(message, stacklevel=2)
    return message
