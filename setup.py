"""Package layout that pyproject.toml cannot express: the wheel carries the embedded
default (configs/*.yaml and checkpoints/tiny-arith) inside the package, as
insight/shipped/configs and insight/shipped/checkpoints/tiny-arith.

Why: a non-editable install (`pip install .`, the Docker images) has no source checkout
around it, so `insight train` could not find configs/tiny.yaml or the tiny policy. The
files stay where they are in the repository (tests, docs and users of a checkout name
them as configs/...); setuptools maps those two folders into the package at build time,
and insight.config resolves relative paths against the shipped copy when there is one.
Everything else (metadata, dependencies, scripts) lives in pyproject.toml.
"""

from setuptools import find_packages, setup

SHIPPED = {
    "insight.shipped.configs": "configs",
    "insight.shipped.checkpoints": "checkpoints",
}

setup(
    packages=find_packages(include=["insight*", "tasks*", "flows*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={
        "insight.shipped.configs": ["*.yaml"],
        "insight.shipped.checkpoints": ["tiny-arith/*"],
    },
)
