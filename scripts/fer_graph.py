"""A shipped float TFLite graph rebuilt as a TensorFlow function whose weights are variables.

Why: the shipped face model was trained on a lent GPU whose checkpoints are gone (checkpoints are never
committed), so fine-tuning it needs its weights back. The float .tflite holds every weight, already folded
(batch norms into convolutions, layer-norm affines and the fusion alpha into the next matrix), and its
operators are few. Replaying them in TensorFlow, op for op, gives the same function with trainable
weights; converting that function again gives the float and int8 files. The replay is checked against the
TFLite interpreter (`FerGraph.check`), so nothing is trusted that was not compared.

Only the operators the shipped graph uses are known; any other is an error that names it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# fused activations in TFLite's schema (ActivationFunctionType)
_ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}
_PADDING = {0: "SAME", 1: "VALID"}


@dataclass
class Op:
    index: int
    name: str
    inputs: list[int]
    outputs: list[int]
    options: dict


class FerGraph:
    """The operators, constants and tensor names of one TFLite subgraph, replayable in TensorFlow."""

    def __init__(self, path: Path):
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model(str(path))
        if len(model.subgraphs) != 1:
            raise ValueError(f"{path}: {len(model.subgraphs)} subgraphs, expected one")
        graph = model.subgraphs[0]
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        dtypes = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        self.path = path
        self.ops: list[Op] = []
        for i, op in enumerate(graph.operators):
            code = model.operatorCodes[op.opcodeIndex]
            options = vars(op.builtinOptions) if op.builtinOptions is not None else {}
            self.ops.append(Op(i, names[max(code.builtinCode, code.deprecatedBuiltinCode)],
                               [int(t) for t in op.inputs], [int(t) for t in op.outputs], options))
        self.names = [t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in graph.tensors]
        self.shapes = [list(t.shape) if t.shape is not None else [] for t in graph.tensors]
        self.constants: dict[int, np.ndarray] = {}
        for i, t in enumerate(graph.tensors):
            data = model.buffers[t.buffer].data
            if data is not None and len(data):
                dtype = {"FLOAT32": np.float32, "INT32": np.int32, "INT64": np.int64}[dtypes[t.type]]
                self.constants[i] = np.frombuffer(bytes(data), dtype).reshape(self.shapes[i])
        self.inputs = [int(t) for t in graph.inputs]
        self.outputs = [int(t) for t in graph.outputs]

    # ---- structure -------------------------------------------------------------------------------
    def producer(self) -> dict[int, Op]:
        return {t: op for op in self.ops for t in op.outputs}

    def ancestors(self, targets: list[int], stop: set[int]) -> list[Op]:
        """The ops needed to compute `targets` from the tensors in `stop`, in graph order."""
        made, needed, todo = self.producer(), set(), list(targets)
        while todo:
            t = todo.pop()
            if t in stop or t in self.constants or t < 0 or t not in made:
                continue
            op = made[t]
            if op.index not in needed:
                needed.add(op.index)
                todo.extend(op.inputs)
        return [op for op in self.ops if op.index in needed]

    def logits(self) -> list[int]:
        """Each network's pre-softmax output: the FULLY_CONNECTED ops with as many outputs as classes."""
        classes = self.shapes[self.outputs[0]][-1]
        return [op.outputs[0] for op in self.ops
                if op.name == "FULLY_CONNECTED" and self.shapes[op.inputs[1]][0] == classes]

    def trainable(self, ops: list[Op]) -> list[int]:
        """Float constants the given ops use as weights, biases or affine vectors (not scalars, shapes, axes)."""
        found: list[int] = []
        for op in ops:
            for t in op.inputs:
                c = self.constants.get(t)
                if c is not None and c.dtype == np.float32 and c.size > 1 and t not in found:
                    found.append(t)
        return found

    # ---- replay ----------------------------------------------------------------------------------
    def run(self, ops: list[Op], values: dict, weights: dict, batch_free: bool = False) -> dict:
        """Execute `ops` in order. `values` maps tensor ids to inputs, `weights` overrides constants.

        With `batch_free` a RESHAPE keeps its input's leading (batch) dimension instead of the shape stored
        for a batch of views, so the networks take any number of faces.
        """
        import tensorflow as tf

        def get(t: int):
            if t in values:
                return values[t]
            if t in weights:
                return weights[t]
            return tf.constant(self.constants[t])

        for op in ops:
            o = op.options
            x = [get(t) if t >= 0 else None for t in op.inputs]
            act = _ACTIVATIONS.get(o.get("fusedActivationFunction", 0), "unknown")
            if act == "unknown":
                raise ValueError(f"op {op.index} {op.name}: fused activation {o['fusedActivationFunction']} unknown")
            if op.name == "CONV_2D":
                kernel = tf.transpose(x[1], (1, 2, 3, 0))
                y = tf.nn.conv2d(x[0], kernel, (1, o["strideH"], o["strideW"], 1), _PADDING[o["padding"]])
                y = y + x[2] if x[2] is not None else y
            elif op.name == "DEPTHWISE_CONV_2D":
                channels = int(x[0].shape[-1])
                kernel = tf.reshape(x[1], (x[1].shape[1], x[1].shape[2], channels, o["depthMultiplier"]))
                y = tf.nn.depthwise_conv2d(x[0], kernel, (1, o["strideH"], o["strideW"], 1), _PADDING[o["padding"]])
                y = y + x[2] if x[2] is not None else y
            elif op.name == "FULLY_CONNECTED":
                units = int(x[1].shape[0])
                flat = tf.reshape(x[0], (-1, int(x[1].shape[1])))
                y = tf.matmul(flat, x[1], transpose_b=True)
                y = y + x[2] if x[2] is not None else y
                if o.get("keepNumDims"):
                    y = tf.reshape(y, tf.concat([tf.shape(x[0])[:-1], [units]], 0))
            elif op.name == "RESHAPE":
                shape = np.array(self.constants[op.inputs[1]]).astype(np.int32)
                if batch_free:
                    y = tf.reshape(x[0], tf.concat([tf.shape(x[0])[:1], shape[1:]], 0))
                else:
                    y = tf.reshape(x[0], shape)
            elif op.name == "TRANSPOSE":
                y = tf.transpose(x[0], self.constants[op.inputs[1]])
            elif op.name == "MEAN":
                y = tf.reduce_mean(x[0], axis=self.constants[op.inputs[1]], keepdims=bool(o.get("keepDims")))
            elif op.name == "ADD":
                y = x[0] + x[1]
            elif op.name == "SUB":
                y = x[0] - x[1]
            elif op.name == "MUL":
                y = x[0] * x[1]
            elif op.name == "RSQRT":
                y = tf.math.rsqrt(x[0])
            elif op.name == "BATCH_MATMUL":
                y = tf.matmul(x[0], x[1], adjoint_a=bool(o.get("adjX")), adjoint_b=bool(o.get("adjY")))
            elif op.name == "SOFTMAX":
                y = tf.nn.softmax(x[0] * o.get("beta", 1.0), axis=-1)
            elif op.name == "STRIDED_SLICE":
                y = tf.strided_slice(x[0], self.constants[op.inputs[1]], self.constants[op.inputs[2]],
                                     self.constants[op.inputs[3]], begin_mask=o["beginMask"],
                                     end_mask=o["endMask"], ellipsis_mask=o["ellipsisMask"],
                                     new_axis_mask=o["newAxisMask"], shrink_axis_mask=o["shrinkAxisMask"])
            else:
                raise ValueError(f"op {op.index}: {op.name} is not an operator this replay knows")
            if act == "relu":
                y = tf.nn.relu(y)
            elif act == "relu6":
                y = tf.nn.relu6(y)
            values[op.outputs[0]] = y
        return values

    def function(self, weights: dict):
        """The whole graph as a tf.function of one face (the runtime contract), with `weights` in it."""
        import tensorflow as tf

        shape = self.shapes[self.inputs[0]]

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="pixels")])
        def serve(pixels):
            return self.run(self.ops, {self.inputs[0]: pixels}, weights)[self.outputs[0]]

        return serve

    def check(self, faces: np.ndarray, weights: dict | None = None) -> float:
        """Largest probability difference between this replay and the TFLite interpreter on `faces`."""
        from pi.vision.fer import ExpressionClassifier

        size, classes = self.shapes[self.inputs[0]][1], self.shapes[self.outputs[0]][-1]
        reference = ExpressionClassifier(self.path, tuple(str(c) for c in range(classes)), size, threads=2)
        serve = self.function(weights or {})
        worst = 0.0
        for face in faces:
            x = face.reshape(self.shapes[self.inputs[0]]).astype(np.float32)
            ref = reference.predict(face[None])[0]
            worst = max(worst, float(np.abs(serve(x).numpy()[0] - ref).max()))
        return worst
