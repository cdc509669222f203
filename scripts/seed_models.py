"""The seed papers' FER models, rebuilt for a fair side-by-side test against ours (issue 20).

Each is built as its paper is summarised in the issue; where that summary (and what this project could find
of the paper) is silent, the choice made here is written next to it, in `SEEDS[...]["choices"]`. All of them
share what the comparison must hold fixed: a raw 48×48 grayscale face 0..255 in, normalised inside the graph
(the device's input contract, so scripts/export_fer.py exports any of them), seven softmax probabilities out
from a float32 layer named `probs` (mixed precision keeps its softmax in float32), FER2013 Training with the
same augmentation, the same wall-time budget rule (scripts/gpu_slot.py --arch NAME), and selection on
PublicTest. Pretrained weights are not used by any model, ours included: the GPU machine has no network,
and what would be compared is then the pretraining, not the architecture.

`build_model("hybrid")` is ours (scripts/fer_model.py), so one builder serves every --arch.
"""
from __future__ import annotations

import sys
from pathlib import Path

import keras
from keras import layers, ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fer_model import CLASSES, STOCK_STAGES, build_hybrid  # noqa: E402

INPUT = (48, 48, 1)

SEEDS: dict[str, dict[str, str]] = {
    "seed-cnn": {
        "paper": "a CNN and an RNN on FER2013, reported at 34 %",
        "choices": "layer sizes not given: three conv blocks (32, 64, 128 filters, two 3x3 convs each, ReLU, "
                   "2x2 max-pool), then dense 256, dropout 0.5, softmax. No batch norm (a plain CNN).",
    },
    "seed-rnn": {
        "paper": "the same paper's RNN",
        "choices": "each of the 48 image rows is one time step of 48 pixels; one LSTM of 128 units, its last "
                   "state to a 7-way softmax. Unrolled (48 steps) so that the int8 TFLite graph has no loop.",
    },
    "seed-cnn-attention": {
        "paper": "a CNN with attention, claiming 95.6 % on FER2013",
        "choices": "the attention's form is not given: CBAM (channel attention from average- and max-pooled "
                   "descriptors through a shared MLP with reduction 8, then a 7x7 spatial attention) after each "
                   "of four VGG-style blocks (64, 128, 256, 256 filters, two 3x3 conv + BN + ReLU, max-pool), "
                   "global average pooling, dense 256, dropout 0.5, softmax.",
    },
    "seed-mobilenet-svm": {
        "paper": "MobileNet + SVM, evaluated with leave-one-out",
        "choices": "MobileNetV1 (depthwise-separable, width 1.0, the stock strides) on the 48x48 face, from "
                   "scratch; the SVM is a linear layer trained jointly with the one-vs-rest squared hinge loss "
                   "(an L2-SVM), its C set by the shared AdamW weight decay; a softmax over its scores only "
                   "makes the output probabilities for the device contract (the argmax is the SVM's). "
                   "Leave-one-out does not apply to FER2013's fixed split: Training / PublicTest as for all.",
    },
    "seed-mnv2-vit": {
        "paper": "the MobileNetV2-ViT hybrid, claiming 98.5 % in-dataset on CK+",
        "choices": "the stock MobileNetV2 at width 1.0 with its stock strides (so 9 ViT tokens from the 3x3 map "
                   "of the 96-channel stage at 48 px), the ViT and alpha fusion as ours (2 blocks, 4 heads, dim "
                   "96): ours minus the stride change. Sizes the paper does not give follow ours.",
    },
}


def _rescaled(inputs: keras.KerasTensor) -> keras.KerasTensor:
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)


def _head(x: keras.KerasTensor, hidden: int, dropout: float) -> keras.KerasTensor:
    x = layers.Dense(hidden, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="fc_dropout")(x)
    return layers.Dense(len(CLASSES), activation="softmax", name="probs", dtype="float32")(x)


def seed_cnn() -> keras.Model:
    """Plain CNN of the 34 % paper (sizes chosen here: SEEDS['seed-cnn'])."""
    inputs = keras.Input(INPUT, name="pixels")
    x = _rescaled(inputs)
    for i, filters in enumerate((32, 64, 128)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"b{i}_conv1")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"b{i}_conv2")(x)
        x = layers.MaxPooling2D(2, name=f"b{i}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, _head(x, 256, 0.5), name="seed_cnn")


def seed_rnn() -> keras.Model:
    """Row-sequence LSTM of the 34 % paper (SEEDS['seed-rnn'])."""
    inputs = keras.Input(INPUT, name="pixels")
    x = _rescaled(inputs)
    x = layers.Reshape((INPUT[0], INPUT[1]), name="rows")(x)
    x = layers.LSTM(128, unroll=True, name="lstm")(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="seed_rnn")


@keras.saving.register_keras_serializable(package="fer_seeds")
class ChannelPool(layers.Layer):
    """Mean and max over channels, stacked: the input of CBAM's spatial attention."""

    def call(self, x):
        return ops.concatenate([ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)], axis=-1)


def _cbam(x: keras.KerasTensor, name: str, reduction: int = 8) -> keras.KerasTensor:
    channels = x.shape[-1]
    squeeze = layers.Dense(max(channels // reduction, 4), activation="relu", name=f"{name}_mlp1")
    excite = layers.Dense(channels, name=f"{name}_mlp2")
    avg = excite(squeeze(layers.GlobalAveragePooling2D(name=f"{name}_avg")(x)))
    mx = excite(squeeze(layers.GlobalMaxPooling2D(name=f"{name}_max")(x)))
    channel = layers.Activation("sigmoid", name=f"{name}_channel")(layers.Add(name=f"{name}_sum")([avg, mx]))
    x = layers.Multiply(name=f"{name}_channel_gate")([x, layers.Reshape((1, 1, channels), name=f"{name}_c")(channel)])
    spatial = layers.Conv2D(1, 7, padding="same", activation="sigmoid", name=f"{name}_spatial")(
        ChannelPool(name=f"{name}_pool")(x))
    return layers.Multiply(name=f"{name}_spatial_gate")([x, spatial])


def seed_cnn_attention() -> keras.Model:
    """VGG-style CNN with CBAM attention after each block (SEEDS['seed-cnn-attention'])."""
    inputs = keras.Input(INPUT, name="pixels")
    x = _rescaled(inputs)
    for i, filters in enumerate((64, 128, 256, 256)):
        for j in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"b{i}_conv{j}")(x)
            x = layers.BatchNormalization(name=f"b{i}_bn{j}")(x)
            x = layers.ReLU(name=f"b{i}_relu{j}")(x)
        x = _cbam(x, f"b{i}_cbam")
        x = layers.MaxPooling2D(2, name=f"b{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, _head(x, 256, 0.5), name="seed_cnn_attention")


def seed_mobilenet_svm(width: float = 1.0) -> keras.Model:
    """MobileNetV1 features and a jointly trained linear SVM (SEEDS['seed-mobilenet-svm'])."""
    inputs = keras.Input(INPUT, name="pixels")
    x = _rescaled(inputs)

    def channels(c: int) -> int:
        return int(c * width)

    x = layers.Conv2D(channels(32), 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    # (pointwise filters, stride) of MobileNetV1's 13 depthwise-separable blocks
    blocks = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
              (512, 1), (1024, 2), (1024, 1))
    for i, (filters, stride) in enumerate(blocks):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"dw{i}_relu")(x)
        x = layers.Conv2D(channels(filters), 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"pw{i}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="features_dropout")(x)
    scores = layers.Dense(len(CLASSES), name="svm_scores", dtype="float32")(x)
    outputs = layers.Softmax(name="probs", dtype="float32")(scores)
    return keras.Model(inputs, outputs, name="seed_mobilenet_svm")


def seed_mnv2_vit() -> keras.Model:
    """The seed's MobileNetV2-ViT hybrid: ours with MobileNetV2's stock strides at width 1.0."""
    return build_hybrid(width=1.0, stages=STOCK_STAGES)


BUILDERS = {
    "seed-cnn": seed_cnn,
    "seed-rnn": seed_rnn,
    "seed-cnn-attention": seed_cnn_attention,
    "seed-mobilenet-svm": seed_mobilenet_svm,
    "seed-mnv2-vit": seed_mnv2_vit,
}
ARCHS = ("hybrid", *BUILDERS)


def build_model(arch: str, width: float = 1.0) -> keras.Model:
    """The network named `arch`; `width` applies to ours (the hybrid) only, the seeds have their papers' sizes."""
    if arch == "hybrid":
        return build_hybrid(width=width)
    if arch not in BUILDERS:
        raise SystemExit(f"unknown --arch {arch!r}: one of {', '.join(ARCHS)}")
    return BUILDERS[arch]()


def uses_svm_head(arch: str) -> bool:
    """Whether `arch` trains its last layer as an SVM (squared hinge on `svm_scores`) rather than by cross-entropy."""
    return arch == "seed-mobilenet-svm"
