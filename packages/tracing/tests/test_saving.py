"""save() and the saved-value registry."""

from __future__ import annotations

import gc
import threading
import weakref

from endoscope_tracing import SAVED, Tracer, UnsavedName, save


class Blob:
    pass


def test_save_outside_a_trace_is_identity_and_keeps_nothing() -> None:
    value = Blob()
    assert save(value) is value
    assert len(SAVED) == 0


def test_marks_are_released_after_the_outermost_trace() -> None:
    with Tracer():
        kept = save(Blob())
        with Tracer():
            save(Blob())
    assert isinstance(kept, Blob)
    assert len(SAVED) == 0
    assert not SAVED.active


def test_unsaved_values_are_freed() -> None:
    refs: list[weakref.ref] = []
    with Tracer():
        temporary = Blob()
        refs.append(weakref.ref(temporary))
    gc.collect()
    assert refs[0]() is None


def test_saved_identity_not_equality() -> None:
    with Tracer():
        a = save([1])
        b = [1]
        is_a, is_b = save(a in SAVED), save(b in SAVED)
    assert a == [1]
    assert (is_a, is_b) == (True, False)


def test_marks_released_even_when_the_block_fails() -> None:
    try:
        with Tracer():
            save(Blob())
            raise RuntimeError
    except RuntimeError:
        pass
    assert len(SAVED) == 0


def test_containers_of_saved_values_survive() -> None:
    with Tracer():
        items = [save(Blob()) for _ in range(3)]
        mapping = {"a": save(Blob())}
        pair = (save(Blob()), 1)
        plain = [Blob()]  # holds nothing saved
    assert len(items) == 3 and all(isinstance(i, Blob) for i in items)
    assert isinstance(mapping["a"], Blob)
    assert isinstance(pair[0], Blob)
    assert isinstance(plain, UnsavedName)


def test_each_thread_has_its_own_marks() -> None:
    """Another thread's trace neither sees this one's marks nor keeps its own
    after its block while this one still runs."""
    inside, other_done = threading.Event(), threading.Event()
    seen: list[int] = []
    kept: list[object] = []

    def long_trace() -> None:
        with Tracer():
            value = save(Blob())
            inside.set()
            other_done.wait(60)
            still = save(value in SAVED)
        kept.extend([value, still])

    def short_trace() -> None:
        inside.wait(60)
        with Tracer():
            save(Blob())
            seen.append(len(SAVED))  # its own mark only
        seen.append(len(SAVED))  # none once its block ended
        other_done.set()

    threads = [threading.Thread(target=long_trace), threading.Thread(target=short_trace)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen == [1, 0]
    assert isinstance(kept[0], Blob) and kept[1] is True
