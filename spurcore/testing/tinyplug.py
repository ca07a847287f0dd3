"""The tiny test dataset and backbone as a module plugin (`spur -p spurcore.testing.tinyplug`), for tests that
run trials in other processes (torchrun, process pools, Ray workers), which load plugins by name."""

from spurcore.testing import TinyPlugin

_tiny = TinyPlugin()
spurcore_register_datasets = _tiny.spurcore_register_datasets
spurcore_register_backbones = _tiny.spurcore_register_backbones
