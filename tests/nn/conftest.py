import pytest


@pytest.fixture(autouse=True)
def _no_trial_in_progress(monkeypatch):
    """kernelkit.nn's in-model trials run one layer at a time per process (`_route._SLOTS`):
    a layer a previous test left in trial must not hold the next test's layers on torch."""
    from kernelkit.nn import _route

    monkeypatch.setattr(_route, "_SLOTS", {False: [None, 0.0], True: [None, 0.0]})
