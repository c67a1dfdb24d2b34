"""upocr_jax: a JAX/Flax NNX reimplementation of UPOCR (ICML 2024)."""

from setuptools import find_packages, setup

setup(
    name="upocr_jax",
    version="0.1.0",
    description=(
        "UPOCR in JAX/Flax NNX: one SwinV2 encoder-decoder with task prompts for "
        "text removal, text segmentation and tampered text detection."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["upocr_jax", "upocr_jax.*", "input_pipeline",
                                    "input_pipeline.*", "configs"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "ml-collections>=1.1.0,<2",
        "numpy>=2.0,<3",
        "absl-py>=2.1,<3",
        "pillow>=10.1,<14",
        "safetensors>=0.4,<1",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.60,<5",
        # tensorflow-datasets needs it to build data sets defined outside TFDS.
        "importlib_resources>=6,<7",
        # Fonts for the synthetic text generator (input_pipeline/fonts.py).
        "font-source-sans-pro>=0.0.1,<0.1",
        "font-source-serif-pro>=0.0.1,<0.1",
        "font-caladea>=0.0.2,<0.1",
        "font-amatic-sc>=0.0.4,<0.1",
        "font-fredoka-one>=0.0.4,<0.1",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3,<4", "scikit-image>=0.24,<0.27",
                 "ruff>=0.17,<0.18"],
        "torch": ["torch>=2.1"],
        # libtpu: TPU training, and --compile_only --topology=... from any host.
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    },
    entry_points={
        "console_scripts": [
            "upocr-train=upocr_jax.main:run_main",
            "upocr-convert=upocr_jax.weights.convert:run_main",
            "upocr-eval=upocr_jax.evaluation.cli:run_main",
            "upocr-predict=upocr_jax.inference.cli:run_main",
        ],
    },
)
