"""The test kit for every test under this repository run from its root (`tests/`, each plugin's
tests, the third-party examples): it is opt-in, as pytester is, not loaded into every session."""

pytest_plugins = ["spurcore.testing"]
