"""Install ultralytics-prune: `pip install .` or `pip install -e .`.

`patches/` and `cfg/` live at the top level of the repository (see docs/architecture.md) and are installed as
`ultralytics_prune.patches` and `ultralytics_prune.cfg` through `package_dir`.
"""

from setuptools import setup

# onnxruntime-gpu has wheels for x86-64 Linux and Windows only (it runs on the CPU too where no GPU is found); macOS and
# ARM boards get the CPU build. Never both: they install the same `onnxruntime` module.
GPU_WHEELS = '(sys_platform == "linux" and platform_machine == "x86_64") or (sys_platform == "win32" and platform_machine == "AMD64")'
CPU_WHEELS = (  # the complement (PEP 508 markers have no 'not')
    '(sys_platform != "linux" and sys_platform != "win32") or (sys_platform == "linux" and platform_machine != "x86_64")'
    ' or (sys_platform == "win32" and platform_machine != "AMD64")'
)

setup(
    name="ultralytics-prune",
    version="0.1.0",
    description="Structured pruning (DepGraph) and Network Slimming for Ultralytics YOLO",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["ultralytics_prune", "ultralytics_prune.recipes", "ultralytics_prune.channels",
              "ultralytics_prune.measure", "ultralytics_prune.patches", "ultralytics_prune.cfg"],
    package_dir={
        "ultralytics_prune": "ultralytics_prune",
        "ultralytics_prune.patches": "patches",
        "ultralytics_prune.cfg": "cfg",
    },
    package_data={"ultralytics_prune.cfg": ["*.yaml"]},
    install_requires=[
        "ultralytics>=8.4.190,<8.5",
        "torch>=2.0",
        "torch-pruning>=1.6.1,<1.7",
        "onnx>=1.14",
        "onnxslim>=0.1.82",
        f"onnxruntime-gpu>=1.18; {GPU_WHEELS}",
        f"onnxruntime>=1.18; {CPU_WHEELS}",
        "pyyaml>=5.3",
        "cloudpickle>=3.1.1",  # Ultralytics' DDP launcher needs it and would pip-install it at run time otherwise
    ],
    extras_require={"test": ["pytest>=8.4,<10", "pytest-xdist>=3.6,<4"]},  # the suite runs with 9.2 and xdist 3.8
    entry_points={
        "console_scripts": [
            "yolo=ultralytics_prune.cli:entrypoint",
            "yolo-prune=ultralytics_prune.cli:entrypoint",
        ]
    },
)
