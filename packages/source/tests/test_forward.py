"""resolve_true_forward and get_or_create_source_accessor on forward-wrapped objects."""

from __future__ import annotations

import functools
import gc
import sys
import threading
import weakref

import pytest

from endoscope_source import (
    SOURCE_ACCESSOR_ATTR,
    TRUE_FORWARD_ATTR,
    SourceAccessor,
    UnsupportedFunctionError,
    get_or_create_source_accessor,
    resolve_true_forward,
)


class Module:
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        return abs(x) + 1


class Static:
    @staticmethod
    def forward(x):
        return x


def accelerate_hook(module: object) -> None:
    """Mimic accelerate's add_hook_to_module."""
    old_forward = module.forward  # type: ignore[attr-defined]
    module._old_forward = old_forward  # type: ignore[attr-defined]

    def new_forward(module, *args, **kwargs):
        return module._old_forward(*args, **kwargs)

    module.forward = functools.update_wrapper(  # type: ignore[attr-defined]
        functools.partial(new_forward, module), old_forward
    )


def endoscope_wrap(module: object, *, by_name: bool = True) -> None:
    """Mimic endoscope's own forward wrapper, marked as such."""
    module.__endoscope_forward__ = module.forward  # type: ignore[attr-defined]

    def wrapper(*args, **kwargs):
        return module.__endoscope_forward__(*args, **kwargs)  # type: ignore[attr-defined]

    setattr(
        wrapper,
        TRUE_FORWARD_ATTR,
        "__endoscope_forward__" if by_name else module.__endoscope_forward__,  # type: ignore[attr-defined]
    )
    module.forward = wrapper  # type: ignore[attr-defined]


def compiled(module: object) -> None:
    """Mimic torch.compile(module.forward): a functools.wraps wrapper on the instance."""
    inner = module.forward  # type: ignore[attr-defined]

    @functools.wraps(inner)
    def compiled_forward(*args, **kwargs):
        return inner(*args, **kwargs)

    module.forward = compiled_forward  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "wrappers",
    [
        [],
        [accelerate_hook],
        [endoscope_wrap],
        [functools.partial(endoscope_wrap, by_name=False)],
        [compiled],
        [endoscope_wrap, accelerate_hook],
        [accelerate_hook, endoscope_wrap],
        [compiled, endoscope_wrap, accelerate_hook],
    ],
    ids=[
        "plain",
        "accelerate",
        "endoscope",
        "endoscope-callable",
        "compiled",
        "endoscope+accelerate",
        "accelerate+endoscope",
        "all",
    ],
)
def test_true_forward_is_found_under_any_wrappers(wrappers: list) -> None:
    module = Module()
    for wrap in wrappers:
        wrap(module)
    assert module(-2) == 3
    assert resolve_true_forward(module) is Module.forward


def test_instance_bound_method_and_partial() -> None:
    def other_forward(self, x):
        return x * 2

    module = Module()
    module.forward = other_forward.__get__(module)  # type: ignore[method-assign]
    assert resolve_true_forward(module) is other_forward
    module.forward = functools.partial(other_forward, module)  # type: ignore[method-assign]
    assert resolve_true_forward(module) is other_forward


def test_unresolvable_forwards_are_reported() -> None:
    module = Module()
    module.forward = lambda x: x  # type: ignore[method-assign]
    with pytest.raises(UnsupportedFunctionError, match="does not receive the instance"):
        resolve_true_forward(module)
    with pytest.raises(UnsupportedFunctionError, match="staticmethod"):
        resolve_true_forward(Static())
    with pytest.raises(UnsupportedFunctionError, match="no forward"):
        resolve_true_forward(object())
    module.forward = abs  # type: ignore[method-assign]
    with pytest.raises(UnsupportedFunctionError, match="cannot find the Python function"):
        resolve_true_forward(module)


def test_accessor_is_cached_on_the_object_and_survives_forward_replacement() -> None:
    module = Module()
    acc = get_or_create_source_accessor(module, path="model.layer")
    assert isinstance(acc, SourceAccessor)
    assert module.__dict__[SOURCE_ACCESSOR_ATTR] is acc
    assert acc.path == "model.layer"
    assert acc.abs_0.path == "model.layer.source.abs_0"
    accelerate_hook(module)
    endoscope_wrap(module)
    assert get_or_create_source_accessor(module, path="ignored") is acc
    acc.abs_0.post_hooks.append(lambda v: v * 10)
    assert acc(module, -2) == 21
    other = Module()
    assert get_or_create_source_accessor(other) is not acc
    assert get_or_create_source_accessor(other).conversion is acc.conversion


def test_accessor_lives_as_long_as_its_object() -> None:
    module = Module()
    acc_ref = weakref.ref(get_or_create_source_accessor(module))
    gc.collect()
    assert acc_ref() is not None
    enabled = gc.isenabled()
    gc.disable()
    try:
        del module
        assert acc_ref() is None
    finally:
        if enabled:
            gc.enable()


def test_objects_without_a_dict_are_refused() -> None:
    class Slotted:
        __slots__ = ()

        def forward(self, x):
            return x

    with pytest.raises(UnsupportedFunctionError, match="no instance __dict__"):
        get_or_create_source_accessor(Slotted())


def test_threads_asking_at_once_get_one_accessor() -> None:
    # Frequent switches make the threads interleave inside the build.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(5):
            module = Module()
            start = threading.Barrier(8)
            found: list[SourceAccessor] = []

            def ask(
                module: Module = module,
                start: threading.Barrier = start,
                found: list[SourceAccessor] = found,
            ) -> None:
                start.wait()
                found.append(get_or_create_source_accessor(module, path="m"))

            threads = [threading.Thread(target=ask) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(found) == 8
            assert all(acc is module.__dict__[SOURCE_ACCESSOR_ATTR] for acc in found)
    finally:
        sys.setswitchinterval(interval)
