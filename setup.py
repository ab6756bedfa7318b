from setuptools import find_packages, setup

# below 2: tools/submit.py --dry-run prints the batch script through a method submitit keeps private
SUBMITIT = "submitit>=1.5,<2"
# tools/export.py and running exported models (ONNX Runtime on CPU; onnxruntime-gpu brings the CUDA provider)
EXPORT = ["onnx>=1.16", "onnxruntime>=1.18"]

setup(
    name="maetransfer",
    version="0.1.0",
    description="MAE pretraining of Vision Transformers and transfer to COCO Mask R-CNN, ADE20K UperNet, "
                "iNaturalist and Places classification",
    python_requires=">=3.10",
    packages=find_packages(include=["pretrain", "pretrain.*", "maetransfer", "maetransfer.*"]),
    include_package_data=True,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm>=1.0.15",
        "pycocotools>=2.0.7",
        # COCOeval in C++: the stats of pycocotools, 11x faster on bbox and 2.6x on segm at val2017 size
        # (benchmarks/bench_coco_eval.py); pycocotools stays for reading COCO and as the fallback
        "faster-coco-eval>=1.8",
        "scipy>=1.10",
        "omegaconf>=2.3",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "numpy>=1.24",
        "pillow>=10.1",  # ImageFont.load_default(size=...) for the labelled reconstruction figures
        "safetensors>=0.4",
        "shapely>=2.0",  # polygon instances cut to the LSJ crop, as detectron2 does
        "filelock>=3.0",  # one download of a released checkpoint when several processes ask (maetransfer.zoo)
        "huggingface_hub>=0.23",  # Hugging Face hub ids as checkpoints (maetransfer.zoo); timm needs it too
        "matplotlib>=3.7",  # training curves of tools/transfer_report.py
        # segmentation decodes, resizes and converts to HSV with OpenCV, as mmseg (mmcv) does: torch's bilinear
        # resize rounds differently, so only OpenCV gives mmseg's pixels
        "opencv-python-headless>=4.5",
    ],
    extras_require={
        # tools/submit.py: Slurm jobs through submitit, as the official MAE submits (srun and sbatch need nothing)
        "slurm": [SUBMITIT],
        "export": EXPORT,
        # scikit-image: the real photos (its data module) of the segmentation tests against mmseg
        "dev": ["pytest>=7", "transformers>=4.40", "scikit-image>=0.19", SUBMITIT, *EXPORT],
    },
)
