"""fairseq-xsam: eXplicit Sharpness-Aware Minimization (ICLR 2026) for fairseq and PyTorch.

Install fairseq first (see scripts/install.sh): fairseq 0.12.2 from PyPI does not build on
Python 3.11; fairseq-fixed 0.12.3.1 does, and must be built against the installed torch.
"""

from setuptools import find_packages, setup

setup(
    name="fairseq-xsam",
    version="0.1.0",
    description="XSAM (eXplicit Sharpness-Aware Minimization) optimizer for fairseq and PyTorch",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists(
        "README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fairseq_xsam", "fairseq_xsam.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.0"],
    extras_require={
        "fairseq": ["fairseq-fixed==0.12.3.1", "hydra-core==1.3.2", "omegaconf==2.3.0",
                    "sacrebleu", "sentencepiece"],
        # the Hugging Face Trainer integration (fairseq_xsam.hf); the versions it was tested with
        "hf": ["transformers==5.25.0", "accelerate==1.16.0"],
        "test": ["pytest"],
    },
    # every command the README shows, in fairseq's habit (fairseq-train, fairseq-generate)
    entry_points={"console_scripts": [
        "xsam-report = fairseq_xsam.report.cli:main",
        "xsam-run-record = fairseq_xsam.report.run_record:main",
        "xsam-bench = fairseq_xsam.bench.cli:main",
        "xsam-precision = fairseq_xsam.bench.precision:main",
        "xsam-gpu-check = fairseq_xsam.bench.gpu_check:main",
        "xsam-flatness = fairseq_xsam.lab.flatness:main",
        "xsam-plane = fairseq_xsam.lab.plane:main",
        "xsam-toy2d = fairseq_xsam.lab.toy2d:main",
        "xsam-fidelity = fairseq_xsam.lab.fidelity_cli:main",
        "xsam-demo = fairseq_xsam.recipes.demo:main",
        "xsam-multi30k = fairseq_xsam.recipes.multi30k:main",
        "xsam-hf-multi30k = fairseq_xsam.recipes.hf_multi30k:main",
        "xsam-study = fairseq_xsam.recipes.study:main",
        "xsam-iwslt14 = fairseq_xsam.recipes.iwslt14:main",
        "xsam-iwslt14-prepare = fairseq_xsam.recipes.iwslt14_prepare:main",
    ]},
    license="MIT",
)
