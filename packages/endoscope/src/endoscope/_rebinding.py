"""Pointing an existing Envoy tree at a new module tree (after loading weights).

A LanguageModel built without weights wraps an empty (meta) model; loading
replaces every module object. The Envoy objects must stay the same ones: a user
may hold ``layer = lm.transformer.h[0]`` from before, and aliases from
``rename`` point at Envoys. So each Envoy is re-pointed at the module at its
path in the new tree; only where the trees differ (a child added, removed or of
another type) are new Envoys built for that part. Aliases are then re-applied.
"""

from __future__ import annotations

import torch

from endoscope_envoy import Envoy, NNsight

__all__ = ["rebind"]


def rebind(root: NNsight, module: torch.nn.Module) -> None:
    """Point ``root`` and every Envoy below it at the modules of ``module``.

    Args:
        root: the wrapped model.
        module: the new model, normally of the same structure.
    """
    _rebind(root, module, root)
    for _, envoy in root.named_modules():
        envoy._aliases.clear()
    root._apply_rename()
    # Caches of the old tree: the learned order of its points, module ids to paths,
    # the forward wrappers call sites lend before their runs.
    root._modules_replaced()


def _rebind(envoy: Envoy, module: torch.nn.Module, root: NNsight) -> None:
    envoy._module = module
    envoy._source = None  # built from the old module's forward on first use
    envoy._forget_lookups()
    children: dict[str, Envoy] = {}
    for name, child in module.named_children():
        path = f"{envoy.path}.{name}"
        envoy_type = root._envoy_type_for(child, path)
        kept = envoy._children.get(name)
        if kept is not None and type(kept) is envoy_type:
            _rebind(kept, child, root)
            children[name] = kept
        else:
            children[name] = envoy_type(child, path=path, root=root, parent=envoy)
    # Updated in place: an edited copy of the model shares these dicts.
    envoy._children.clear()
    envoy._children.update(children)
    envoy._ordered = tuple(children.values())
