"""The package layout exists and imports."""
import importlib


def test_packages_import():
    for name in ("mer", "mer.data", "mer.preprocess", "mer.models"):
        assert importlib.import_module(name).__name__ == name
