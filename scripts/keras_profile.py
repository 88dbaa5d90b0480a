"""The per-step profile of ``scripts/bench_keras.py --profile``: what one NaturalGradient step
in ``model.fit`` costs, piece by piece, against Adam's step.

Each piece is the median of ``repeats`` calls from the same weights (restored untimed; the
first call, tracing included, kept apart; :func:`keras_curves.first_and_median`): the loss
gradient; the curvature operator's linearization and one curvature-vector product (from chains
of 1 and 11 products); one ``minimize`` call; one forward pass (a line-search trial); with
``cg_preconditioner="kfac"``, K-FAC's statistics and its damped inverses; and the train step
``fit`` compiles. Each runs in a ``tf.function`` with the model's ``jit_compile``.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import keras
import tensorflow as tf

import natgrad
from natgrad.keras_kfac import (
    LayerRecording,
    build_factors,
    kfac_step_arguments,
    sampled_output_cotangents,
)
from natgrad.kfac import KroneckerFactors, damped_inverses

sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras_curves  # noqa: E402

# What NaturalGradient hits under XLA on CPU: its fit step, and MaxPool's second derivative.
XLA_ERRORS = ("must be a compile-time constant", "Detected unsupported operations")


def fit_step(model: keras.Model, optimizer, x, y, repeats: int) -> dict:
    """The train step ``fit`` compiled (``model.train_function``) on one batch."""
    model.optimizer.build(model.trainable_variables)
    return keras_curves.first_and_median(
        lambda: model.train_on_batch(x, y, return_dict=True)["loss"],
        lambda: model.train_function([(x, y, None)])["loss"], repeats=repeats,
        before=keras_curves.keras_restorer(model, optimizer), prefer=XLA_ERRORS)


def profile_variant(loss: str, model: keras.Model, optimizer, x, y, repeats: int) -> dict:
    """The pieces of one NaturalGradient step on the batch ``(x, y)`` for the compiled Keras
    ``loss``, as ``fit`` builds them (see the module docstring):
    ``{piece: {"ms", "first_call_s"} or {"error"}}``, with ``cg_product_ms``,
    ``linearization_ms`` and the statistics of one ``minimize`` call."""
    pieces = {"fit_step": fit_step(model, optimizer, x, y, repeats)}
    variables = model.trainable_variables
    restore = keras_curves.keras_restorer(model, optimizer)
    closures = {"outputs_fn": lambda: model(x, training=True),
                "output_distribution": natgrad.output_distribution_for_loss(loss)}

    def loss_fn():
        return model.compute_loss(x=x, y=y, y_pred=model(x, training=True), training=True)

    def gradient():
        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(loss, variables)])

    def products(count: int):
        def chain():
            matvec = optimizer.curvature_operator(loss_fn, variables, **closures)
            v = [tf.ones_like(w) for w in variables]
            for _ in range(count):  # one after another, as in CG; normalized to stay finite
                v = matvec(v)
                norm = tf.sqrt(tf.add_n([tf.reduce_sum(t * t) for t in v]))
                v = [t / (norm + 1e-30) for t in v]
            return norm
        return chain

    kfac = optimizer.cg_preconditioner == "kfac"
    factors = KroneckerFactors(optimizer.preconditioner_decay, optimizer.kfac_inverse_period)
    if kfac:
        build_factors(model, factors)

    def kfac_closures() -> dict:  # as fit's step: factors from the recorded forward pass
        if not kfac:
            return closures
        outputs_fn, preconditioner = kfac_step_arguments(
            model, factors, closures["outputs_fn"], closures["output_distribution"],
            optimizer.iterations)
        return {**closures, "outputs_fn": outputs_fn, "preconditioner": preconditioner}

    def kfac_statistics():  # the recorded forward pass, the sampled backward pass, A and G
        recording = LayerRecording(model, variables)
        outputs = recording.wrap(closures["outputs_fn"])()
        cotangents = sampled_output_cotangents(model, outputs, closures["output_distribution"],
                                               optimizer.iterations)
        return tf.add_n([tf.reduce_sum(m) for pair in recording.factors(cotangents, tf.float32)
                         for m in pair])

    def kfac_inverses():  # every kfac_inverse_period steps
        return tf.add_n([tf.reduce_sum(m) for a, g, _, _ in factors.states()
                         for m in damped_inverses(a, g, 1e-3)])

    compiled = functools.partial(tf.function, jit_compile=model.jit_compile)
    minimize = compiled(lambda: optimizer.minimize(loss_fn, variables, **kfac_closures()))
    fns = {"gradient": compiled(gradient), "forward": compiled(loss_fn),
           "1_product": compiled(products(1)), "11_products": compiled(products(11)),
           "minimize": lambda: minimize()["loss_after"]}
    if kfac:
        fns.update(kfac_statistics=compiled(kfac_statistics),
                   kfac_inverses=compiled(kfac_inverses))
    for piece, fn in fns.items():
        pieces[piece] = keras_curves.first_and_median(fn, fn, repeats=repeats, before=restore,
                                                      prefer=XLA_ERRORS)
    if "ms" in pieces["minimize"]:
        restore()
        stats = minimize()  # one step from the start weights
        pieces["minimize_stats"] = {k: float(stats[k]) for k in
                                    ("cg_iterations", "line_search_tries", "accepted", "kl")}
    if "ms" in pieces["1_product"] and "ms" in pieces["11_products"]:
        pieces["cg_product_ms"] = (pieces["11_products"]["ms"] - pieces["1_product"]["ms"]) / 10
        pieces["linearization_ms"] = pieces["1_product"]["ms"] - pieces["cg_product_ms"]
    return pieces


def profile_line(p: dict, adam: dict) -> str:
    """``gradient X ms, CG product Y ms (x gradient), minimize Z ms (x gradient), ...``."""
    def ms(value: float | None, of: float | None = None, what: str = "gradient") -> str:
        if value is None:
            return "failed"
        return f"{value:.2f} ms" + (f" ({value / of:.1f}x {what})" if of else "")

    grad = p["gradient"].get("ms")
    stats = p.get("minimize_stats")
    kfac = (f", K-FAC statistics {ms(p['kfac_statistics'].get('ms'), grad)}, inverses "
            f"{ms(p['kfac_inverses'].get('ms'))} (every kfac_inverse_period steps)"
            if "kfac_statistics" in p else "")
    return (f"gradient {ms(grad)}, forward (a line-search trial) {ms(p['forward'].get('ms'))}, "
            f"CG product {ms(p.get('cg_product_ms'), grad)} "
            f"(+ linearization {ms(p.get('linearization_ms'))}){kfac}, minimize "
            f"{ms(p['minimize'].get('ms'), grad)}"
            + (f" [{stats['cg_iterations']:.0f} CG iterations, {stats['line_search_tries']:.0f}"
               " line-search trials]" if stats else "")
            + f", fit step {ms(p['fit_step'].get('ms'), adam.get('ms'), 'adam')}, adam step "
            f"{ms(adam.get('ms'))}; first call (tracing): fit step "
            f"{p['fit_step'].get('first_call_s', math.nan):.2f} s, adam "
            f"{adam.get('first_call_s', math.nan):.2f} s"
            + "".join(f"\n    {k} failed: {v['error']}" for k, v in p.items()
                      if isinstance(v, dict) and "error" in v))
