from setuptools import find_packages, setup

setup(
    name="bio_detectron",
    version="0.1.0",
    description=(
        "Detectron2 extension: train detection and classification networks with "
        "biologically-plausible learning rules (sign-symmetry, feedback alignment)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    # torch, torchvision and detectron2 are installed by `make` (tools/install_env.sh): their
    # builds depend on the platform and detectron2 is not on PyPI under its own name.
    install_requires=[
        "numpy",
        "Pillow",
        "fvcore",
        "iopath",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "matplotlib",
        "tabulate",
        "tensorboard",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "timm"]},  # timm: detectron2 ViTDet
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
