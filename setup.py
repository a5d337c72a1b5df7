"""Install fairdarts: `pip install -e .` (the CLIs also run from the repository root without it)."""
from setuptools import find_packages, setup

setup(
    name="fairdarts",
    version="0.1.0",
    description="Fair DARTS and DARTS: differentiable architecture search, retraining and evaluation",
    packages=find_packages(include=["fairdarts", "fairdarts.*", "darts", "darts.*"]),
    package_data={"fairdarts.search_space": ["genotypes.json"]},
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "fairdarts-search=fairdarts.search.cli:main",
            "fairdarts-train=fairdarts.train.cli:main",
            "fairdarts-evaluate=fairdarts.evaluation.cli:main",
            "fairdarts-summary=fairdarts.summary:main",
            "fairdarts-visualize=fairdarts.visualize:main",
            "fairdarts-derive=fairdarts.search.derive_cli:main",
        ]
    },
)
