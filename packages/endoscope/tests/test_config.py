"""CONFIG: nnsight's shape, views of the lower layers' settings, environment variables."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback

import pytest
import torch

import endoscope_envoy
from endoscope import CONFIG, NNsight


def test_scheduler_is_envoys_setting(scheduler):
    assert CONFIG.APP.SCHEDULER == endoscope_envoy.CONFIG.scheduler == scheduler
    other = "thread" if scheduler == "greenlet" else "greenlet"
    CONFIG.APP.SCHEDULER = other
    assert endoscope_envoy.CONFIG.scheduler == other
    endoscope_envoy.CONFIG.scheduler = scheduler
    assert scheduler == CONFIG.APP.SCHEDULER


def test_the_scheduler_setting_picks_the_scheduler_of_new_traces(scheduler):
    model = NNsight(torch.nn.Linear(2, 2))
    chosen = type(model._make_scheduler()).__name__
    assert chosen == {"greenlet": "GreenletScheduler", "thread": "ThreadScheduler"}[scheduler]


def test_an_unknown_scheduler_is_refused():
    with pytest.raises(ValueError, match="unknown scheduler"):
        CONFIG.APP.SCHEDULER = "fibers"


def test_pymount_adds_and_removes_save_methods():
    assert CONFIG.APP.PYMOUNT
    try:
        CONFIG.APP.PYMOUNT = False
        assert not CONFIG.APP.PYMOUNT
        assert not hasattr(torch.ones(1), "save") and not hasattr([], "save")
    finally:
        CONFIG.APP.PYMOUNT = True
    assert hasattr(torch.ones(1), "save") and hasattr({}, "save")


def library_frames(debug: bool) -> list[str]:
    """The endoscope frames in the traceback of an error raised inside a trace."""
    model = NNsight(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    previous = CONFIG.APP.DEBUG
    CONFIG.APP.DEBUG = debug
    try:
        with model.trace(torch.ones(1, 2)):
            model[0].output.no_such_attribute
    except AttributeError as error:
        frames = traceback.extract_tb(error.__traceback__)
    finally:
        CONFIG.APP.DEBUG = previous
    return [f.filename for f in frames if f"{os.sep}endoscope_" in f.filename]


def test_debug_shows_library_frames_in_tracebacks():
    assert library_frames(debug=False) == []
    assert library_frames(debug=True) != []


def test_repr_shows_the_settings(scheduler):
    text = repr(CONFIG)
    assert text.startswith("Config(APP=AppConfig(")
    assert f"SCHEDULER={scheduler!r}" in text and "PYMOUNT=True" in text


SHOW = """
import torch, endoscope, endoscope_envoy
app = endoscope.CONFIG.APP
print(app.SCHEDULER, endoscope_envoy.CONFIG.scheduler, app.DEBUG, app.PYMOUNT,
      hasattr(torch.ones(1), "save"))
"""


def run_with_environment(**variables: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENDOSCOPE_")}
    env.update(variables)
    result = subprocess.run(
        [sys.executable, "-c", SHOW], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_environment_variables_set_config():
    shown = run_with_environment(
        ENDOSCOPE_SCHEDULER="thread", ENDOSCOPE_DEBUG="1", ENDOSCOPE_PYMOUNT="0"
    )
    assert shown == ["thread", "thread", "True", "False", "False"]


def test_defaults_without_environment_variables():
    scheduler, envoy_scheduler, debug, pymount, has_save = run_with_environment()
    assert scheduler == envoy_scheduler == "greenlet"  # greenlet is installed here
    assert (debug, pymount, has_save) == ("False", "True", "True")


def test_nnsights_other_app_settings_are_accepted():
    """nnsight 0.8.1's CONFIG.APP also has REMOTE_LOGGING and DISABLE_CPP_BACKTRACE
    (both True by default); a script that reads or sets them keeps running."""
    from endoscope._config import AppConfig

    app = AppConfig()
    assert app.REMOTE_LOGGING is True and app.DISABLE_CPP_BACKTRACE is True
    app.REMOTE_LOGGING = False
    assert app.REMOTE_LOGGING is False and AppConfig.REMOTE_LOGGING is True
