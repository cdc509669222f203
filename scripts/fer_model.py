"""MobileNetV2 + Vision-Transformer hybrid for 48x48 FER2013 faces (TensorFlow/Keras, training only).

Why this shape (measured side by side by scripts/compare_fer_arch.py: models/fer_arch.json, README):
- The stock MobileNetV2 has stride 32, which leaves a 2x2 map for a 48x48 face; we remove the stride of
  the 64-channel stage so the maps go 24 -> 12 -> 6 -> 6 -> 3. The 6x6 map after the 96-channel stage
  gives the ViT 36 patch tokens, enough for self-attention to relate eyes, brows and mouth.
- Width 0.5 keeps the int8 file near 1.3 MB and trains twice as fast as width 1.0 on a 2-core CPU.
- The graph takes raw grayscale 0..255 and normalises inside, so the runtime contract is "pixels in".
- LayerNorm is written out as (x-mean)*rsqrt(var+eps)*g+b because Keras' LayerNormalization leaves float
  islands in a full-integer TFLite graph; this form quantizes fully.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@keras.saving.register_keras_serializable(package="fer")
class PlainLayerNorm(layers.Layer):
    """LayerNorm over the last axis spelled with elementary ops so that int8 conversion keeps it integer."""

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        dim = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")

    def call(self, x):
        if self.compute_dtype != "float32":  # mixed precision (scripts/gpu_slot.py): statistics in float32
            return ops.cast(self._normalise(ops.cast(x, "float32"), ops.cast(self.gamma, "float32"),
                                            ops.cast(self.beta, "float32")), self.compute_dtype)
        return self._normalise(x, self.gamma, self.beta)

    def _normalise(self, x, gamma, beta):
        mean = ops.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        var = ops.mean(centred * centred, axis=-1, keepdims=True)
        return centred * ops.rsqrt(var + self.epsilon) * gamma + beta

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="fer")
class PositionEmbedding(layers.Layer):
    """Learned absolute position embedding added to the patch tokens."""

    def build(self, input_shape):
        self.pos = self.add_weight(
            name="pos", shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, x):
        return x + self.pos


@keras.saving.register_keras_serializable(package="fer")
class AlphaFusion(layers.Layer):
    """F = a*F_cnn + (1-a)*F_vit with a = sigmoid(w), w learnable and starting at 0 (a = 0.5)."""

    def build(self, input_shape):
        self.logit = self.add_weight(name="alpha_logit", shape=(), initializer="zeros")

    def call(self, inputs):
        cnn, vit = inputs
        alpha = ops.sigmoid(self.logit)
        return alpha * cnn + (1.0 - alpha) * vit


@keras.saving.register_keras_serializable(package="fer")
class ConstantAdd(layers.Layer):
    """x + c with a learned vector c: what a transformer MLP whose ReLU units all died reduces to."""

    def build(self, input_shape):
        self.c = self.add_weight(name="c", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x + self.c


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def _inverted_residual(x, expansion: int, out_ch: int, stride: int, name: str):
    in_ch = x.shape[-1]
    h = x
    if expansion != 1:
        h = layers.Conv2D(in_ch * expansion, 1, use_bias=False, name=f"{name}_expand")(h)
        h = layers.BatchNormalization(name=f"{name}_expand_bn")(h)
        h = layers.ReLU(6.0, name=f"{name}_expand_relu")(h)
    h = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(h)
    h = layers.BatchNormalization(name=f"{name}_dw_bn")(h)
    h = layers.ReLU(6.0, name=f"{name}_dw_relu")(h)
    h = layers.Conv2D(out_ch, 1, use_bias=False, name=f"{name}_project")(h)
    h = layers.BatchNormalization(name=f"{name}_project_bn")(h)  # linear bottleneck: no activation
    if stride == 1 and in_ch == out_ch:
        h = layers.Add(name=f"{name}_add")([x, h])
    return h


def _transformer_block(x, heads: int, mlp_dim: int, dropout: float, name: str, mlp: bool = True):
    dim = x.shape[-1]
    h = PlainLayerNorm(name=f"{name}_ln1")(x)
    h = layers.MultiHeadAttention(heads, dim // heads, dropout=dropout, name=f"{name}_mha")(h, h)
    x = layers.Add(name=f"{name}_add1")([x, h])
    if not mlp:  # folded at export: the MLP branch had collapsed to a constant
        return ConstantAdd(name=f"{name}_mlp_const")(x)
    h = PlainLayerNorm(name=f"{name}_ln2")(x)
    h = layers.Dense(mlp_dim, activation="relu", name=f"{name}_mlp1")(h)
    h = layers.Dropout(dropout, name=f"{name}_mlp_drop")(h)
    h = layers.Dense(dim, name=f"{name}_mlp2")(h)
    return layers.Add(name=f"{name}_add2")([x, h])


def mlp_unit_stats(model: keras.Model, images) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per ViT block, (peak, mean) activation of each hidden MLP unit over `images` (raw 0..255, NxHxW).

    A unit whose peak is ~0 never fires (a dead ReLU): training uses this to revive such units, export to
    fold a block whose units are all dead into the constant it computes.
    """
    import numpy as np

    x = np.asarray(images, np.float32)[..., None]
    stats = {}
    for b in range(8):
        try:
            mlp1 = model.get_layer(f"vit{b}_mlp1")
        except ValueError:
            break
        acts = keras.Model(model.input, mlp1.output).predict(x, verbose=0)
        flat = acts.reshape(-1, acts.shape[-1])
        stats[b] = (flat.max(axis=0), flat.mean(axis=0))
    return stats


# (expansion t, channels c, repeats n, stride s) per MobileNetV2 stage; the 64-channel stage's stride
# is 1 instead of 2 so a 48x48 input ends at 3x3 rather than 2x2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 1), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))
# the stock MobileNetV2 strides, for comparison (scripts/compare_fer_arch.py)
STOCK_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))


def build_hybrid(input_size: int = 48, width: float = 0.5, vit_dim: int = 96, vit_blocks: int = 2,
                 vit_heads: int = 4, vit_mlp: int = 192, head_dim: int = 256,
                 dropout: float = 0.2, constant_mlp_blocks: frozenset = frozenset(),
                 stages: tuple = STAGES) -> keras.Model:
    """Build the hybrid; input is (H, W, 1) raw grayscale 0..255, output 7 softmax probabilities."""
    inputs = keras.Input((input_size, input_size, 1), name="pixels")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
    x = layers.Conv2D(_make_divisible(32 * width), 3, strides=2, padding="same", use_bias=False,
                      name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    vit_source = None
    for stage, (t, c, n, s) in enumerate(stages):
        out_ch = _make_divisible(c * width)
        for i in range(n):
            x = _inverted_residual(x, t, out_ch, s if i == 0 else 1, name=f"s{stage}b{i}")
        if c == 96:
            vit_source = x  # 6x6 map for a 48x48 input
    # CNN branch: 1x1 conv head, global pool, project to the fusion width.
    c = layers.Conv2D(head_dim * 2, 1, use_bias=False, name="cnn_head")(x)
    c = layers.BatchNormalization(name="cnn_head_bn")(c)
    c = layers.ReLU(6.0, name="cnn_head_relu")(c)
    c = layers.GlobalAveragePooling2D(name="cnn_pool")(c)
    c = layers.Dense(head_dim, name="cnn_proj")(c)
    # ViT branch: each cell of the 6x6 map is a patch token.
    v = layers.Conv2D(vit_dim, 1, name="vit_embed")(vit_source)
    grid = v.shape[1] * v.shape[2]
    v = layers.Reshape((grid, vit_dim), name="vit_tokens")(v)
    v = PositionEmbedding(name="vit_pos")(v)
    for b in range(vit_blocks):
        v = _transformer_block(v, vit_heads, vit_mlp, 0.1, name=f"vit{b}", mlp=b not in constant_mlp_blocks)
    v = PlainLayerNorm(name="vit_ln")(v)
    v = layers.GlobalAveragePooling1D(name="vit_pool")(v)
    v = layers.Dense(head_dim, name="vit_proj")(v)
    f = AlphaFusion(name="fusion")([c, v])
    f = layers.ReLU(name="fusion_relu")(f)
    f = layers.Dropout(dropout, name="head_dropout")(f)
    # float32 even under a mixed-precision policy (scripts/gpu_slot.py): the softmax and the loss need it
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="probs", dtype="float32")(f)
    return keras.Model(inputs, outputs, name="fer_mnv2_vit")
