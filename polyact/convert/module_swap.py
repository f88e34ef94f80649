"""Call-site discovery for models ``torch.fx`` cannot trace: activation modules are swapped in
place (a module called ``n`` times per forward, counted on an example input, becomes a
:class:`~polyact.nn.sites.CallSites`); what swapping cannot see is checked while calibrating
(:mod:`polyact.convert.eager_check`)."""
from __future__ import annotations

import torch
from torch import nn

from ..activations import elementwise
from ..nn.maxpool import PolyMaxPool
from ..nn.sites import CallSites, reset_call_sites
from .sites import Site, Structure, UnsupportedOperationError, target_name
from .supported_ops import MAXPOOL_MODULES, describe
from .tracing import maxpool_sites, pool_note, pooled_module


@torch.no_grad()
def count_calls(model: nn.Module, example: torch.Tensor | None) -> dict[str, int]:
    """How often each activation module runs in one forward on ``example`` (modules called
    more than once only); empty without an example or when the forward fails."""
    if example is None:
        return {}
    counts: dict[str, int] = {}
    handles = [m.register_forward_hook(lambda *_, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
               for name, m in model.named_modules() if name and elementwise.module_name(m)]
    try:
        model(example)
    except Exception:  # the caller's forward will raise its own error during calibration
        return {}
    finally:
        for h in handles:
            h.remove()
    return {name: n for name, n in counts.items() if n > 1}


def swap_modules(model: nn.Module, maxpool: str, reason: str, call_counts: dict[str, int]) -> Structure:
    sites: list[Site] = []
    notes = [f"torch.fx could not trace the model ({reason}); swapped activation modules in place"]
    problems: list[str] = []
    averaged, claimed = False, ()
    for name, module in list(model.named_modules()):
        if not name or name.startswith(claimed):
            continue
        if isinstance(module, nn.RReLU) and not module.training:  # eval: a leaky ReLU of the mean slope
            module = nn.LeakyReLU((module.lower + module.upper) / 2, inplace=module.inplace)
            model.set_submodule(name, module)
            notes.append(f"{name}: nn.RReLU in eval mode is nn.LeakyReLU({module.negative_slope:g})")
        if type(module) in MAXPOOL_MODULES:
            pool = pooled_module(module, maxpool, name, problems)
            if pool is not None:
                model.set_submodule(name, pool)
                notes.append(pool_note(name, describe(type(module)), pool if isinstance(pool, PolyMaxPool) else None))
                sites += maxpool_sites(name, pool) if isinstance(pool, PolyMaxPool) else []
                averaged |= not isinstance(pool, PolyMaxPool)
        elif elementwise.module_name(module) is not None:
            calls, inplace = call_counts.get(name, 1), getattr(module, "inplace", False) is True
            if calls > 1:
                model.set_submodule(name, CallSites(module, calls))
                sites += [Site(f"{name}.{k}", describe(type(module)), getattr(model.get_submodule(name), str(k)),
                               target_name(module), inplace=inplace) for k in range(calls)]
                notes.append(f"{name}: one module called {calls} times per forward; each call is its own activation")
            else:
                sites.append(Site(name, describe(type(module)), module, target_name(module), inplace=inplace))
        else:
            continue
        claimed = (*claimed, name + ".")
    if problems:
        raise UnsupportedOperationError("the model uses operations a polynomial network cannot evaluate:\n" + "\n".join(problems))
    if any(n > 1 for n in call_counts.values()):
        model.register_forward_pre_hook(reset_call_sites)
    return Structure(model, sites, notes, traced=False, call_counts=dict(call_counts), avg_pooled=averaged,
                     fallback_reason=reason)
