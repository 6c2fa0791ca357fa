"""The served victim graph against the data: does it run, batch, answer finite logits, learn?

These checks run on the provider's own test images before anything is trained on the
victim's answers: a wrong preprocessing shows up here as an error or a near-chance warning.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...core.layout import IMAGE, LOGITS
from ...data import ImageSet
from ..onnx_export import session
from .spec import Preprocessing, VictimOptions

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


# How far from 1 a row of probabilities may sum (float16 outputs, rounding in the model).
PROB_SUM_TOLERANCE = 1e-2


def output_kind_problem(served_logits: np.ndarray, declared: str) -> str | None:
    """A refusal when the victim's answers contradict ``--victim-output``, else None.

    ``served_logits`` are the served graph's answers on the test images: the model's own
    outputs for ``logits``, log(max(p, floor)) for ``probs``. Rows that are all in [0, 1]
    and sum to 1 are probabilities; a softmax served as logits would train the shadow on a
    softmax of probabilities and serve misinformation built from it.
    """
    n = len(served_logits)
    if declared == "logits":
        rows = served_logits
        sums = rows.sum(axis=1)
        if rows.min() >= 0 and rows.max() <= 1 and np.allclose(sums, 1, atol=1e-3):
            return (
                f"the model answers probabilities (every row is in [0, 1] and sums to 1 on all "
                f"{n} test images) but --victim-output is logits: pass --victim-output probs"
            )
        return None
    sums = np.exp(served_logits.astype(np.float64)).sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > PROB_SUM_TOLERANCE)
    if off.size:
        return (
            f"--victim-output probs, but the model's outputs do not sum to 1 on {off.size} of "
            f"{n} test images (e.g. {sums[off[0]]:.4g}): it answers logits or scores; leave "
            "out --victim-output probs"
        )
    return None


def _alternatives(prep: Preprocessing, channels: int) -> list[tuple[Preprocessing, list[str]]]:
    """Preprocessings that differ from ``prep`` by the usual mistakes, with their flags."""
    scales = [(prep.scale, [])]
    if prep.scale in (1.0, 255.0):
        other = 255.0 if prep.scale == 1.0 else 1.0
        scales.append((other, [f"--victim-scale {other:g}"]))
    orders = [(prep.channel_order, [])]
    if channels == 3:
        other_order = "bgr" if prep.channel_order == "rgb" else "rgb"
        orders.append((other_order, [f"--victim-channel-order {other_order}"]))
    norms = [((prep.mean, prep.std), [])]
    if prep.mean or prep.std:
        norms.append((((), ()), ["no --victim-mean / --victim-std"]))
    out = []
    for scale, f1 in scales:
        for order, f2 in orders:
            for (mean, std), f3 in norms:
                flags = f1 + f2 + f3
                if flags:
                    alt = replace(prep, scale=scale, channel_order=order, mean=mean, std=std)
                    out.append((alt, flags))
    return out


def suggest_preprocessing(
    options: VictimOptions,
    shape: tuple[int, int, int],
    num_classes: int,
    test: ImageSet,
    accuracy: float,
) -> str | None:
    """The fix for a near-chance ONNX victim, if a usual mistake explains it, else None.

    Tries the other pixel scale (1 / 255), channel order and no mean/std on up to 256 test
    images (seconds): the best that scores well above chance is named with its flags.
    """
    if options.kind != "onnx":
        return None
    from .onnx_io import load_onnx_model
    from .onnx_wrap import wrap_onnx_victim

    model = load_onnx_model(Path(options.onnx_path))
    images = np.ascontiguousarray(test.images[:256])
    labels = test.labels[:256]
    best: tuple[float, list[str]] | None = None
    for prep, flags in _alternatives(options.preprocessing, shape[0]):
        try:
            wrapped, _, _ = wrap_onnx_victim(
                model,
                shape,
                num_classes,
                prep,
                options.output,
                options.input_name,
                options.output_name,
            )
            sess = ort.InferenceSession(
                wrapped.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            answers = sess.run([LOGITS], {IMAGE: images})[0]
        except Exception:  # an alternative that does not even run is no suggestion
            continue
        score = float((answers.argmax(axis=1) == labels).mean())
        if chance_warning(score, num_classes) is None and (best is None or score > best[0]):
            best = (score, flags)
    if best is None:
        return None
    score, flags = best
    return f"With {' and '.join(flags)} its accuracy is {score:.4f} (was {accuracy:.4f})"
