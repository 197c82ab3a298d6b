"""An exact reverse-mode adjoint that stores every step instead of recomputing it.

`diffrax.RecursiveCheckpointAdjoint` (the default) keeps O(log max_steps) checkpoints of the
solver state and, in the backward pass, recomputes the forward steps between them and each
Runge–Kutta step's stages again before taking its VJP: about one extra forward solve. Here
the step loop is one `lax.scan` of exactly `max_steps` iterations (`lax.cond` skips those past
t1) and the Runge–Kutta stage loop a scan of its stages, so JAX's own reverse mode of `scan`
keeps every residual of every step (stage values, attention weights) and the backward pass
recomputes nothing. The arithmetic of the forward pass is the same as the default's, so the
gradient is the derivative of the same computed solve (equal to rounding).

Costs: memory O(max_steps × residuals of a step), and every one of the `max_steps`
iterations is traced into the program; under `vmap` (a batch of solves) `cond` becomes
`select` and all `max_steps` iterations are computed. Size `max_steps` just above the number
of steps the solve takes; a solve that needs more fails with diffrax's max_steps error (it is
never silently truncated).
"""

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax

__all__ = ["StoredAdjoint"]


def _stage_loop_scanned(solver):
    """Every Runge–Kutta solver inside `solver` (also inside wrappers) with its stage loop as a
    reverse-differentiable scan of its stages (diffrax's "bounded" kind) instead of the
    checkpointed loop that recomputes stages."""

    def is_rk(node):
        return isinstance(node, diffrax.AbstractRungeKutta)

    def scanned(node):
        if is_rk(node) and node.scan_kind is None:
            return eqx.tree_at(lambda s: s.scan_kind, node, "bounded", is_leaf=lambda x: x is None)
        return node

    return jax.tree_util.tree_map(scanned, solver, is_leaf=is_rk)


def _scanned_loop(cond_fun, body_fun, init_val, *, max_steps, buffers=None, **_):
    """`eqxi.while_loop` as one scan of `max_steps` conditional steps (no checkpointing)."""
    if max_steps is None:
        raise ValueError(
            "`StoredAdjoint()` needs a finite `max_steps` (the size of the stored steps), got "
            "None; pass e.g. max_steps=64."
        )
    return eqxi.while_loop(
        cond_fun,
        body_fun,
        init_val,
        max_steps=max_steps,
        buffers=buffers,
        kind="bounded",
        base=max(max_steps, 2),
    )


class StoredAdjoint(diffrax.AbstractAdjoint):
    """Exact reverse-mode gradient of the computed solve with no recomputation: every step's
    residuals are stored (see the module docstring). Pass as `adjoint=StoredAdjoint()` with a
    `max_steps` just above the steps the solve takes (e.g. `FlowOptions(max_steps=32,
    adjoint=StoredAdjoint())`)."""

    def loop(
        self,
        *,
        solver,
        max_steps,
        terms,
        throw,
        passed_solver_state,
        passed_controller_state,
        **kwargs,
    ):
        del throw, passed_solver_state, passed_controller_state
        return self._loop(
            **kwargs,
            solver=_stage_loop_scanned(solver),
            max_steps=max_steps,
            terms=terms,
            inner_while_loop=_scanned_loop,
            outer_while_loop=_scanned_loop,
        )
