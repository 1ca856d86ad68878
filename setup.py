"""flaxprune: structured pruning of language models by factorized low-rank pruning (FLOP), in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.12",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "chex>=0.1.90,<0.2",
    "tensorflow-datasets>=4.9.9,<5",
    "ml_collections>=1.1.0,<2",
    "absl-py>=2.1.0,<3",
    "numpy>=1.26,<3",
    "tqdm>=4.66,<5",
    "array_record>=0.5,<1",
    "tokenizers>=0.19,<1",
    "safetensors>=0.4,<1",
    "scikit-learn>=1.3,<2",
    "scipy>=1.11,<2",
    "threadpoolctl>=3.1,<4",
    "lazy_loader>=0.4,<1",
    "flatbuffers>=24,<26",  # jax.export (de)serialization
    "matplotlib>=3.8,<4",  # plots, headless (Agg)
]

setup(
    name="flaxprune",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["flaxprune", "flaxprune.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest>=8.0,<10", "pytest-xdist>=3.5,<4", "setuptools>=70.1,<85"]},
    entry_points={"console_scripts": ["flaxprune=flaxprune.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
