"""Policy specs to policy objects: ``make_policy("schedutil")`` and friends.

A spec is ``PREFIX`` or ``PREFIX:ARGUMENT``; the prefix (everything before the first ``:``)
selects a factory in :data:`FACTORIES`, which receives the whole spec.  The kernel-governor
baselines are built in.  The daemon imports this module, so it must stay light: no torch, no
gymnasium, no I/O at import time.

Extension point
---------------
Modules with heavier policies register themselves, e.g.::

    from edgesched.policy import registry
    registry.register("qlearn", make_qlearn, usage="qlearn")
    registry.register("learned", load_learned, usage="learned:PATH")

A factory takes the full spec string and returns a :class:`~edgesched.policy.base.Policy`, raising
:class:`~edgesched.errors.PolicyError` for an argument it cannot use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgesched.errors import PolicyError
from edgesched.policy.base import Performance, Policy, Powersave
from edgesched.policy.governors import Conservative, Ondemand, Schedutil

__all__ = ["FACTORIES", "PolicyFactory", "make_policy", "open_policy", "register", "valid_specs"]

PolicyFactory = Callable[[str], Policy]

FACTORIES: dict[str, PolicyFactory] = {}
"""Policy factories keyed by spec prefix (the part before the first ``:``)."""

_USAGE: dict[str, str] = {}


def _plain(prefix: str, cls: Callable[[], Policy]) -> PolicyFactory:
    """A factory for a built-in policy that takes no argument."""

    def factory(spec: str) -> Policy:
        if spec != prefix:
            raise PolicyError(f"policy {prefix!r} takes no argument, got {spec!r}; "
                              f"use {prefix!r}")
        return cls()

    factory.__name__ = f"make_{prefix}"
    return factory


def register(prefix: str, factory: PolicyFactory, *, usage: str | None = None,
             replace: bool = False) -> None:
    """Make ``make_policy`` hand specs starting with ``prefix`` to ``factory``.

    ``usage`` is how the spec is written in error messages (``"learned:PATH"``); it defaults to
    the prefix.  Registering a prefix twice is an error unless ``replace`` is true.
    """
    if not prefix or ":" in prefix or prefix != prefix.strip():
        raise ValueError(f"a policy prefix is a non-empty word without ':', got {prefix!r}")
    if prefix in FACTORIES and not replace:
        raise ValueError(f"policy prefix {prefix!r} is already registered")
    FACTORIES[prefix] = factory
    _USAGE[prefix] = usage or prefix


def valid_specs() -> list[str]:
    """How each registered spec is written, in registration order."""
    return [_USAGE.get(p, p) for p in FACTORIES]


def make_policy(spec: str) -> Policy:
    """A fresh policy for ``spec`` (``"performance"``, ``"schedutil"``, ``"learned:PATH"`` ...).

    Raises :class:`PolicyError` naming the valid specs when the prefix is unknown.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PolicyError(f"empty policy spec; expected one of: {', '.join(valid_specs())}")
    prefix = spec.split(":", 1)[0]
    factory = FACTORIES.get(prefix)
    if factory is None:
        raise PolicyError(f"unknown policy {spec!r}; expected one of: {', '.join(valid_specs())}")
    return factory(spec)


def open_policy(spec: str, fallback: str = "schedutil") -> Policy:
    """The policy for ``spec``; one that cannot be used is reported and ``fallback`` runs."""
    try:
        return make_policy(spec)
    except PolicyError as exc:
        logging.getLogger("edgesched.server").warning("%s; falling back to %s", exc, fallback)
        return make_policy(fallback)


register("performance", _plain("performance", Performance))
register("powersave", _plain("powersave", Powersave))
register("ondemand", _plain("ondemand", Ondemand))
register("conservative", _plain("conservative", Conservative))
register("schedutil", _plain("schedutil", Schedutil))


def _make_learned(spec: str) -> Policy:
    from edgesched.policy.learned import load_learned

    path = spec.split(":", 1)[1] if ":" in spec else ""
    if not path:
        raise PolicyError("learned needs a policy file: learned:PATH (NAME.npz with NAME.json); "
                          f"valid specs: {', '.join(valid_specs())}")
    return load_learned(path)


def _make_qlearn(spec: str) -> Policy:
    from edgesched.policy.qlearn import load_qtable

    path = spec.split(":", 1)[1] if ":" in spec else ""
    if not path:
        raise PolicyError("qlearn needs a trained table here: qlearn:PATH (`edgesched eval` "
                          "also accepts a bare qlearn and trains one in the simulator); "
                          f"valid specs: {', '.join(valid_specs())}")
    return load_qtable(path)


# numpy-only policy files, imported when first asked for
register("learned", _make_learned, usage="learned:PATH")
register("qlearn", _make_qlearn, usage="qlearn:PATH")
