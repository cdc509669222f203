from setuptools import find_packages, setup

setup(
    name="emotion-edge",
    version="0.1.0",
    description="Raspberry Pi daemon that tells how a person feels from face and physiology, over MQTT",
    python_requires=">=3.9",
    packages=find_packages(include=["pi", "pi.*", "drivers", "drivers.*"]),
    install_requires=[
        "paho-mqtt>=2.0,<3",
        "numpy>=1.23",
        "PyYAML>=6.0",
        # 5.x headless wheels ship no CascadeClassifier data: stay on 4.x
        "opencv-python-headless>=4.8,<5",
        # TFLite runtime; wheels exist for x86_64 and 64-bit ARM (Raspberry Pi OS 64-bit), not 32-bit ARM
        "ai-edge-litert>=1.0; platform_machine=='x86_64' or platform_machine=='aarch64'",
        # pure Python; its MockFactory drives the simulated button and ear clip too
        "gpiozero>=2.0",
    ],
    extras_require={
        "pi": ["smbus2>=0.4", "grove.py>=0.6", "picamera2; platform_machine=='aarch64'"],
        "aws": ["AWSIoTPythonSDK>=1.5"],
        "train": ["tensorflow==2.21.*"],
        # `emotion-edge sleep report`: statistics and plots (imported lazily: the daemon runs without them)
        "report": ["scipy>=1.11", "statsmodels>=0.14", "matplotlib>=3.7"],
        "dev": ["pytest>=7", "heartpy>=1.2.7", "smbus2>=0.4", "AWSIoTPythonSDK>=1.5",
                "scipy>=1.11", "statsmodels>=0.14", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["emotion-edge=pi.cli:main"]},
)
