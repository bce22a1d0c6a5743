"""The ``--torch-free`` guard: prove that the tests which need no model never import torch.

``make test-fast`` runs ``pytest -m "not model and not node and not slow" --torch-free``. With the
option, a watcher on ``sys.meta_path`` notes the first import of torch, diffusers, transformers or
accelerate (it only watches: imports behave exactly as without it), and

- an import while the test modules are collected (a test module that imports torch at module level)
  stops the run, naming the import's origin;
- an import while a test runs (its setup, call or teardown) fails that test, with the importing
  stack, unless the test is marked ``model``.

Without the option nothing is watched: in a full run torch is loaded by the first model test, after
which a stray import could not be seen anyway.
"""

from __future__ import annotations

import importlib.abc
import sys
import traceback
from collections.abc import Generator, Sequence
from types import ModuleType
from typing import Any

import pytest

HEAVY = ("torch", "diffusers", "transformers", "accelerate")
"""Top-level packages only model tests may import (directly or through the code under test)."""
_MACHINERY = ("importlib", "/_pytest/", "/pluggy/", "torch_free.py")
"""Frames left out of the reported stack: the import system, pytest's and this module's."""


class _Watcher(importlib.abc.MetaPathFinder):
    """Records the first import of a heavy package; never finds anything itself."""

    def __init__(self) -> None:
        self.seen: tuple[str, str] | None = None  # (module, the importing stack)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        if self.seen is None and fullname.partition(".")[0] in HEAVY:
            frames = traceback.format_stack(limit=60)[:-1]
            ours = [frame for frame in frames if not any(part in frame for part in _MACHINERY)]
            self.seen = (fullname, "".join(ours[-8:]))
        return None

    def take(self) -> tuple[str, str] | None:
        seen, self.seen = self.seen, None
        return seen


_watcher: _Watcher | None = None


def _loaded() -> list[str]:
    return [name for name in HEAVY if name in sys.modules]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--torch-free",
        action="store_true",
        default=False,
        help="fail any test not marked 'model' that imports torch, diffusers, transformers or accelerate "
        "(and stop if a test module imports one at module level); used by `make test-fast`",
    )


def pytest_configure(config: pytest.Config) -> None:
    global _watcher
    if not config.getoption("--torch-free"):
        return
    already = _loaded()
    if already:
        raise pytest.UsageError(
            f"--torch-free: {', '.join(already)} was imported before the tests were collected (by a "
            "conftest.py or a plugin); import it in the fixtures that need it instead"
        )
    _watcher = _Watcher()
    sys.meta_path.insert(0, _watcher)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _watcher
    if _watcher is not None and _watcher in sys.meta_path:
        sys.meta_path.remove(_watcher)
    _watcher = None


def pytest_collection_finish(session: pytest.Session) -> None:
    if _watcher is None:
        return
    seen = _watcher.take()
    if seen is not None:
        module, stack = seen
        raise pytest.UsageError(
            f"--torch-free: collecting the tests imported {module}; test modules must import torch, "
            "diffusers and transformers inside the tests or fixtures that use them (which are marked "
            f"'model'). Imported from:\n{stack}"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return _checked(item, (yield))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return _checked(item, (yield))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, Any]:
    return _checked(item, (yield))


def _checked(item: pytest.Item, result: Any) -> Any:
    if _watcher is None:
        return result
    seen = _watcher.take()
    if seen is not None and item.get_closest_marker("model") is None:
        module, stack = seen
        pytest.fail(
            f"--torch-free: this test is not marked 'model' but imported {module}. Mark it "
            "@pytest.mark.model (or use a fixture built on tiny_dir, which marks it), or keep the model "
            f"out of it (tests/fake_hub.py). Imported from:\n{stack}",
            pytrace=False,
        )
    return result
