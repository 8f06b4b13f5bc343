"""Maps the repository's top-level folders onto one import namespace, ``tdet``.

client/ -> tdet.client, training/ -> tdet.training, ensembles/ -> tdet.ensembles. Everything else
(name, dependencies, entry points) is in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {"client": "tdet.client", "training": "tdet.training", "ensembles": "tdet.ensembles"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for folder, name in ROOTS.items():
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=package_dir,
    # Triton model sources, config templates and backend stand-ins are data, not importable modules.
    package_data={"tdet.ensembles": ["**/*.py", "**/*.pbtxt", "**/*.txt", "**/*.json"],
                  "tdet.training": ["**/*.json", "**/*.txt", "**/*.yaml"]},
    include_package_data=True,
)
