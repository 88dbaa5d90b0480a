"""natgrad: natural-gradient and trust-region optimization for Keras 3.

Curvature-vector products (Hessian, Gauss-Newton, Fisher), a compiled conjugate-gradient
solver, and :class:`NaturalGradient`, a Keras optimizer built from them.
"""

from natgrad import distributions
from natgrad.conjugate_gradient import STATUS_NAMES, CGResult, conjugate_gradient
from natgrad.curvature import (
    HVP_METHODS,
    gauss_newton_operator,
    gauss_newton_vector_product,
    hessian,
    hessian_vector_product,
    linearize_gauss_newton,
)
from natgrad.keras_fit import enable_natural_gradient, output_distribution_for_loss
from natgrad.optimizer import NaturalGradient
from natgrad.structure import flatten, unflatten

__all__ = [
    "enable_natural_gradient",
    "output_distribution_for_loss",
    "NaturalGradient",
    "CGResult",
    "HVP_METHODS",
    "STATUS_NAMES",
    "conjugate_gradient",
    "distributions",
    "flatten",
    "gauss_newton_operator",
    "gauss_newton_vector_product",
    "hessian",
    "hessian_vector_product",
    "linearize_gauss_newton",
    "unflatten",
]
__version__ = "0.1.0"
