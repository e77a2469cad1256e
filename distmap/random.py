"""Random NamedArrays: ``distmap.random.normal(key, axes)`` and friends, matching ``jax.random``.

Example:
    >>> import distmap, jax
    >>> distmap.random.normal(jax.random.key(0), {"batch": 2}).shape
    {'batch': 2}
"""

from distmap._src.random import bernoulli, categorical, normal, randint, uniform

__all__ = ["normal", "uniform", "randint", "bernoulli", "categorical"]
