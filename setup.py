import os
import runpy
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# extra -> {requirement: module}; read from the file, as the package cannot be imported yet.
EXTRAS = runpy.run_path(os.path.join(HERE, "bio_detectron", "_extras.py"))["EXTRAS"]


class BuildPyWithConfigs(build_py):
    """
    Copies the repository's configs/ into the built package as bio_detectron/model_zoo/configs,
    so that an installed package has them (``bio_detectron.model_zoo``), as detectron2 does with
    its model zoo configs. The repository keeps configs/ where it is (tools, tests and README use
    those paths); an editable install reads it there and gets no copy.
    """

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = os.path.join(self.build_lib, "bio_detectron", "model_zoo", "configs")
        # Rebuilt from scratch: a reused build/ would otherwise keep configs deleted since.
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(
            os.path.join(HERE, "configs"),
            target,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )


setup(
    name="bio_detectron",
    version="0.1.0",
    description=(
        "Detectron2 extension: train detection and classification networks with "
        "biologically-plausible learning rules (sign-symmetry, feedback alignment, Kolen-Pollack, "
        "weight mirror, batch-manhattan SGD)"
    ),
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    cmdclass={"build_py": BuildPyWithConfigs},
    # The core (bio_detectron.core) needs PyTorch only. torch >= 2.7:
    # torch.compiler.is_exporting (converted layers run the stock forward under torch.export).
    # `make` (tools/install_env.sh) installs a matching torch/torchvision pair first; pip then
    # finds them satisfied.
    install_requires=["torch>=2.7", "torchvision"],
    # bio_detectron/_extras.py says what each extra is for. detectron2 itself is not on PyPI
    # under its own name: tools/install_detectron2.sh installs it.
    extras_require={
        **{extra: sorted(requirements) for extra, requirements in EXTRAS.items()},
        "all": sorted({r for requirements in EXTRAS.values() for r in requirements}),
        # timm: detectron2's ViTDet, built by a test.
        "test": ["pytest", "pytest-timeout", "timm", "ruff==0.17.6"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
