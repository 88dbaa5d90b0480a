"""``natgrad.NaturalGradient``: a Keras 3 optimizer for trust-region natural-gradient steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from natgrad.conjugate_gradient import NON_FINITE, conjugate_gradient
from natgrad.distribute import ReplicaMean, check_strategy, replica_context
from natgrad.distributions import OutputDistribution
from natgrad.optimizer_settings import (
    CG_ITERS,
    KFAC_CG_ITERS,
    UNSUPPORTED_BASE_KWARGS,
    base_kwargs,
    checked_settings,
    settings_config,
)
from natgrad.preconditioner import diagonal_preconditioner, update_second_moments
from natgrad.step_closures import (
    linearize_curvature,
    loss_and_gradient,
    step_closures,
    step_max_kl,
)
from natgrad.structure import as_tf_variables, check_variables, dot
from natgrad.trust_region import (
    backtracking_line_search,
    levenberg_marquardt_damping,
    reduction_ratio,
    trust_region_step_size,
)


@keras.saving.register_keras_serializable(package="natgrad")
class NaturalGradient(keras.optimizers.Optimizer):
    """Natural-gradient optimizer with conjugate gradient and a KL trust region.

    Each step solves ``(C + λI) s = g`` for the gradient ``g`` by conjugate gradient, using only
    curvature-vector products ``C v``, where ``C`` is the Fisher information (``"fisher"``), the
    generalized Gauss-Newton matrix (``"gauss_newton"``) or the Hessian of the loss
    (``"hessian"``), and moves the variables to ``θ − α s`` (Amari, 1998; Martens, 2010). With
    ``max_kl`` the step is scaled to the edge of the trust region ``½ (αs)ᵀ(C + λI)(αs) = max_kl``
    and a backtracking line search enforces the measured KL (Schulman et al., 2015, TRPO).
    A step whose loss or gradient is not finite, or that no line-search point accepts, leaves
    every variable bit for bit as it was.

    Keras 3 gives an optimizer only ``(gradient, variable)`` pairs, but a natural-gradient step
    needs the loss and the model outputs as closures over the batch. So the step is taken by
    :meth:`minimize` (custom loops), and ``model.fit`` uses it through
    :func:`natgrad.enable_natural_gradient`, which installs a ``train_step`` that calls
    :meth:`minimize`. ``apply_gradients`` raises an error saying so.

    Args:
      learning_rate: float or ``keras.optimizers.schedules.LearningRateSchedule``, default
        ``1.0``. Multiplies the natural-gradient step ``s``; with ``max_kl``, it multiplies the
        trust-region step (``1.0`` lands on the KL boundary).
      curvature: ``"fisher"`` (default), ``"gauss_newton"`` or ``"hessian"``. For the losses
        ``model.fit`` supports, the Fisher and the Gauss-Newton matrix coincide.
      damping: float ``λ ≥ 0`` added to the curvature's diagonal, default ``1e-3``.
      adaptive_damping: bool, default ``False``. Adjust ``λ`` after every step by the
        Levenberg-Marquardt rule (shrink by ``damping_decay`` when the quadratic model predicts
        the loss change well, grow it when not). ``λ`` is optimizer state and is saved.
      damping_decay: float in ``(0, 1)``, default ``2/3``.
      min_damping, max_damping: bounds for adaptive ``λ``, default ``1e-8`` and ``1e4``.
      cg_iters: int ≥ 1 or ``None`` (default): conjugate-gradient iterations per step;
        ``None`` is ``3`` when the step has a K-FAC preconditioner (``model.fit`` with
        ``"kfac"`` and a Dense / Conv2D layer, or ``minimize``'s ``preconditioner``), else
        ``10``.
      cg_tol: float ≥ 0, CG relative residual tolerance, default ``1e-10``.
      cg_preconditioner: ``"kfac"`` (default), ``"diagonal"`` or ``None``. ``"kfac"``:
        Kronecker factors of each Dense / Conv2D layer's curvature (K-FAC), moving averages
        (decay ``preconditioner_decay``, default ``0.95``) whose damped inverses are
        recomputed every ``kfac_inverse_period`` steps (default ``10``) (:mod:`natgrad.kfac`);
        ``model.fit`` gathers them from the step's own forward pass
        (:mod:`natgrad.keras_kfac`); a custom loop passes ``preconditioner`` to
        :meth:`minimize`, and without one (and in ``fit`` under a multi-replica
        ``tf.distribute`` strategy) ``"kfac"`` acts as ``"diagonal"``. ``"diagonal"``: a
        running average of squared gradients to the power 0.75 (:mod:`natgrad.preconditioner`).
        Both are optimizer state (K-FAC's in ``fit``'s hook, not saved). ``None``: plain CG,
        as natgrad 0.2 and TRPO's update. ``scripts/bench_keras.py`` measured the choice.
      max_kl: float > 0 or ``None`` (default): the trust-region radius ``δ`` in KL.
      line_search_shrink: float in ``(0, 1)``, default ``0.8``: backtracking factor.
      line_search_max_tries: int ≥ 0, default ``10``. ``0`` takes the full step without a
        line search (it is still rejected if the loss becomes non-finite).
      curvature_batch_fraction: float in ``(0, 1]``, default ``1.0``: the leading part of each
        batch used for curvature products in ``model.fit`` (cheaper, noisier curvature).
      hvp_method: ``"forward_over_reverse"`` (default) or ``"reverse_over_reverse"``, for
        Hessian-vector products (``curvature="hessian"``, or ``"fisher"`` from a ``kl_fn``).
      name: string, default ``"natural_gradient"``.
      **kwargs: the base ``keras.optimizers.Optimizer`` keyword arguments. Those that reshape
        gradients (``clipnorm``, ``weight_decay``, ``use_ema``, ...) do not apply to a
        curvature-preconditioned step and are rejected with an error.
    """

    def __init__(
        self,
        learning_rate=1.0,
        curvature: str = "fisher",
        damping: float = 1e-3,
        adaptive_damping: bool = False,
        damping_decay: float = 2.0 / 3.0,
        min_damping: float = 1e-8,
        max_damping: float = 1e4,
        cg_iters: int | None = None,
        cg_tol: float = 1e-10,
        cg_preconditioner: str | None = "kfac",
        preconditioner_decay: float = 0.95,
        kfac_inverse_period: int = 10,
        max_kl: float | None = None,
        line_search_shrink: float = 0.8,
        line_search_max_tries: int = 10,
        curvature_batch_fraction: float = 1.0,
        hvp_method: str = "forward_over_reverse",
        name: str = "natural_gradient",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **base_kwargs(kwargs))
        for attribute, value in checked_settings(
            learning_rate=learning_rate, curvature=curvature, damping=damping,
            adaptive_damping=adaptive_damping, damping_decay=damping_decay,
            min_damping=min_damping, max_damping=max_damping, cg_iters=cg_iters, cg_tol=cg_tol,
            cg_preconditioner=cg_preconditioner, preconditioner_decay=preconditioner_decay,
            kfac_inverse_period=kfac_inverse_period, max_kl=max_kl,
            line_search_shrink=line_search_shrink, line_search_max_tries=line_search_max_tries,
            curvature_batch_fraction=curvature_batch_fraction, hvp_method=hvp_method,
        ).items():
            setattr(self, attribute, value)

    # Keras optimizer protocol ------------------------------------------------------------

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._damping = self.add_variable(
            shape=(),
            # Not keras.initializers.Constant: it casts through float32 (1e-3 -> 1.00000005e-3).
            initializer=lambda shape, dtype=None: tf.constant(
                self.initial_damping, dtype=dtype, shape=shape
            ),
            dtype="float64",
            name="damping",
        )
        # Only with a preconditioner: without one, the optimizer's variables (and so the
        # checkpoints holding them) are what they were before the option existed.
        self._second_moments = (
            [self.add_variable_from_reference(v, "grad_second_moment") for v in var_list]
            if self.cg_preconditioner else []
        )

    @property
    def damping(self) -> float:
        """The current damping ``λ`` (adaptive mode changes it every step)."""
        if not self.built:
            return self.initial_damping
        return float(self._damping.numpy())

    def apply(self, grads, trainable_variables=None):
        raise RuntimeError(
            "NaturalGradient cannot take a step from (gradient, variable) pairs alone: it needs "
            "the loss and the model outputs on the batch to form curvature products. In a custom "
            "loop call optimizer.minimize(loss_fn, variables, ...); for model.fit call "
            "natgrad.enable_natural_gradient(model) after model.compile(...)."
        )

    def get_config(self):
        config = super().get_config()
        for key in UNSUPPORTED_BASE_KWARGS:
            config.pop(key, None)
        config.update(settings_config(self))
        return config

    # The step ---------------------------------------------------------------------------

    def curvature_operator(
        self,
        loss_fn: Callable[[], tf.Tensor],
        variables: Sequence,
        *,
        kl_fn: Callable[[], tf.Tensor] | None = None,
        outputs_fn: Callable[[], object] | None = None,
        output_distribution: OutputDistribution | None = None,
    ) -> Callable:
        """The operator ``v -> C v`` this optimizer's ``curvature`` setting asks for.

        ``"hessian"``: Hessian of ``loss_fn``. ``"fisher"`` / ``"gauss_newton"``: ``Jᵀ H_out J v``
        from ``outputs_fn`` and ``output_distribution.fisher_vector_product`` if both are given
        (linearized once, see :func:`natgrad.gauss_newton_operator`),
        else (``"fisher"`` only) the Hessian of ``kl_fn`` at the current variables.
        """
        return linearize_curvature(
            self.curvature, loss_fn, variables, kl_fn=kl_fn, outputs_fn=outputs_fn,
            output_distribution=output_distribution, hvp_method=self.hvp_method,
        )[1]

    def _preconditioner(self, variables: list, grads: list, finite_gradient):
        """CG's ``r -> M⁻¹ r`` for this step, after folding its gradient into the running
        second moments (``None`` without ``cg_preconditioner``)."""
        if not self.cg_preconditioner:
            return None
        moments = [self._second_moments[self._get_variable_index(v)] for v in variables]
        update_second_moments(moments, grads, self.preconditioner_decay, finite_gradient)
        return diagonal_preconditioner(moments, self.iterations + 1, self.preconditioner_decay,
                                       [g.dtype for g in grads])

    def _build_for_step(self, variables: list, *, distributed: bool) -> None:
        """Builds the optimizer on its first step; under ``tf.distribute`` that is too late."""
        if self.built:
            return
        if distributed:
            raise ValueError(
                "under a tf.distribute strategy, build the optimizer before the step, in "
                "the strategy's scope: optimizer.build(model.trainable_variables)")
        self.build(variables)

    def minimize(
        self,
        loss_fn: Callable[[], tf.Tensor],
        var_list: Sequence,
        *,
        kl_fn: Callable[[], tf.Tensor] | None = None,
        outputs_fn: Callable[[], object] | None = None,
        output_distribution: OutputDistribution | None = None,
        curvature_vector_product: Callable | None = None,
        max_kl=None,
        replica_weight=None,
        preconditioner: Callable | None = None,
    ) -> dict[str, tf.Tensor]:
        """Takes one natural-gradient step on ``loss_fn`` and returns its statistics.

        Args:
          loss_fn: zero-argument callable returning the scalar loss ``L(θ)`` on the batch.
          var_list: the variables ``θ`` to update (Keras or ``tf.Variable``).
          kl_fn: optional zero-argument callable returning ``KL(π_θ₀ ‖ π_θ)`` against outputs
            fixed *before* the step (so it is 0 at the start). Used for the trust-region test
            in the line search and, with ``curvature="fisher"``, as the source of curvature.
          outputs_fn, output_distribution: the model outputs on the curvature batch and the
            distribution they parameterize (e.g. ``natgrad.distributions.CATEGORICAL``). Give
            the fast Gauss-Newton form of the Fisher and, if ``kl_fn`` is omitted, the KL.
          curvature_vector_product: optional ``v -> C v`` overriding the above.
          max_kl: optional trust-region radius for this step only (a number or a scalar
            tensor), instead of the optimizer's ``max_kl``; ignored when that is ``None``.
            ``model.fit`` uses it to shrink the bound on small batches.
          replica_weight: under ``tf.distribute``, this replica's share of the global batch
            (its local batch size) for the replica averages; ``None`` weighs replicas
            equally, exact for equal shards. See :mod:`natgrad.distribute`.
          preconditioner: optional ``λ -> (r -> M⁻¹ r)``, called once per step after the
            gradient with the step's damping, instead of ``cg_preconditioner``'s (e.g. K-FAC's
            from :class:`natgrad.kfac.KroneckerFactors`); if it returns ``None``, the latter.

        ``loss_fn`` is called first at the start variables ``θ₀`` (for ``loss_before``), then
        at the line search's trial points. ``iterations`` counts calls (steps attempted,
        accepted or not), as the step counter of learning-rate schedules and callbacks.

        Returns:
          dict of scalar tensors: ``loss_before``, ``loss_after``, ``kl`` (NaN when no KL is
          available), ``accepted`` (bool), ``line_search_tries``, ``step_fraction``,
          ``step_norm`` (of the applied change), ``cg_iterations``, ``cg_residual``,
          ``cg_status`` (index into ``natgrad.STATUS_NAMES``), ``damping`` (used for this
          step), ``reduction_ratio`` (actual / predicted loss change).

        Works eagerly and inside ``tf.function``, and per replica under ``MirroredStrategy``
        or ``MultiWorkerMirroredStrategy`` (``strategy.run``), where each closure sees the
        replica's shard and the step equals the single-device step on the whole batch.

        Raises:
          ValueError: an unsupported ``tf.distribute`` strategy, a non-scalar loss, a
            ``max_kl`` without a way to measure the KL, or no source of curvature.
        """
        check_strategy()
        mean = ReplicaMean(replica_context(), replica_weight)
        variables = check_variables(var_list)
        max_kl = step_max_kl(self.max_kl, max_kl, kl_fn=kl_fn, outputs_fn=outputs_fn,
                             output_distribution=output_distribution)
        self._build_for_step(variables, distributed=mean.active)
        matvec, kl_fn = step_closures(
            self.curvature, loss_fn, variables, kl_fn=kl_fn, outputs_fn=outputs_fn,
            output_distribution=output_distribution,
            curvature_vector_product=curvature_vector_product, hvp_method=self.hvp_method,
            mean=mean,
        )

        loss_before, grads, finite_gradient = loss_and_gradient(loss_fn, variables, mean)
        dtype = loss_before.dtype
        damping = tf.cast(self._damping, dtype)
        given = preconditioner(damping) if preconditioner is not None else None
        iters = self.cg_iters or (KFAC_CG_ITERS if given is not None else CG_ITERS)
        solve = conjugate_gradient(
            matvec, grads, max_iters=iters, tol=self.cg_tol, damping=damping,
            preconditioner=given or self._preconditioner(variables, grads, finite_gradient),
            unroll=mean.active or iters == 1,  # one product: no loop to trace
        )
        direction = solve.x
        learning_rate = tf.cast(self.learning_rate, dtype)
        if max_kl is not None:
            beta, size_ok = trust_region_step_size(max_kl, solve.x_dot_ax)
            scale = learning_rate * beta
        else:
            scale, size_ok = learning_rate, tf.constant(True)
        step = [tf.cast(scale, d.dtype) * d for d in direction]
        valid = finite_gradient & size_ok & (solve.status != NON_FINITE)
        nan = tf.constant(float("nan"), dtype)

        def evaluate():
            loss = loss_fn()
            kl = kl_fn() if kl_fn is not None else nan
            return mean((loss, tf.cast(kl, loss.dtype)))

        search = backtracking_line_search(
            as_tf_variables(variables), step, evaluate, loss_before=loss_before, max_kl=max_kl,
            shrink=self.line_search_shrink, max_tries=self.line_search_max_tries, enabled=valid,
            unroll=mean.active,
        )
        # The taken step is Δ = −fraction·s; ρ compares the loss change with the quadratic model.
        fraction = search.fraction * scale
        ratio = reduction_ratio(search.loss - loss_before, grads, direction, solve.x_dot_ax,
                                damping, fraction)
        if self.adaptive_damping:  # a batch whose gradient is not finite says nothing of λ
            adapted = levenberg_marquardt_damping(
                damping, ratio, search.accepted, decay=self.damping_decay,
                min_damping=self.min_damping, max_damping=self.max_damping,
            )
            self._damping.assign(tf.cast(tf.where(finite_gradient, adapted, damping),
                                         self._damping.dtype))
        self.iterations.assign_add(1)
        return {
            "loss_before": loss_before,
            "loss_after": search.loss,
            "kl": search.kl if kl_fn is not None else nan,
            "accepted": search.accepted,
            "line_search_tries": search.tries,
            "step_fraction": search.fraction,
            "step_norm": fraction * tf.sqrt(dot(direction, direction)),
            "cg_iterations": solve.iterations,
            "cg_residual": solve.residual_norm,
            "cg_status": solve.status,
            "damping": damping,
            "reduction_ratio": ratio,
        }

