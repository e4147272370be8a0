#!/usr/bin/python3
"""Writes the corpus's generated models: "typed", a small ONNX graph whose
inputs and outputs cover the tensor types and shapes no downloaded model
does (FP16, BF16, FP64, INT8/16, UINT8/16/32/64, BOOL, BYTES strings,
rank-0 scalars in and out), and "fp16_dynamic", an FP16 output of dynamic
shape, which onnxruntime_go v1.27 cannot read back, and "sequence_output",
a sequence where the protocol carries tensors only (the runtime refuses
both at load). Built with Debian's python3-onnx (hack/deps/models.apt); the bytes
are deterministic, so `--check` fails when the committed file is stale.
Run by Debian's /usr/bin/python3, where python3-onnx installs, whatever
python3 comes first on PATH.

usage: hack/gen-typed-model.py [--check] [DIR]
"""
import os
import sys

import onnx
from onnx import TensorProto as T
from onnx import helper as h

DEFAULT_DIR = "cmd/pilotlight/testdata/corpus"


def fp16_dynamic():
    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "fp16_dynamic",
                         [h.make_tensor_value_info("x", T.FLOAT16, ["n"])],
                         [h.make_tensor_value_info("y", T.FLOAT16, ["n"])])
    model = h.make_model(graph, producer_name="pilotlight hack/gen-typed-model.py",
                         opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def sequence_output():
    graph = h.make_graph([h.make_node("SequenceConstruct", ["x"], ["y"])], "sequence_output",
                         [h.make_tensor_value_info("x", T.FLOAT, [2])],
                         [h.make_tensor_sequence_value_info("y", T.FLOAT, [2])])
    model = h.make_model(graph, producer_name="pilotlight hack/gen-typed-model.py",
                         opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def typed():
    inputs = [
        h.make_tensor_value_info("x_fp16", T.FLOAT16, [2, 3]),
        h.make_tensor_value_info("x_bf16", T.BFLOAT16, [2]),
        h.make_tensor_value_info("x_fp64", T.DOUBLE, ["batch"]),
        h.make_tensor_value_info("x_int8", T.INT8, ["batch", 4]),
        h.make_tensor_value_info("x_int16", T.INT16, [3]),
        h.make_tensor_value_info("x_uint8", T.UINT8, ["batch", 4]),
        h.make_tensor_value_info("x_uint16", T.UINT16, [2]),
        h.make_tensor_value_info("x_uint32", T.UINT32, [2]),
        h.make_tensor_value_info("x_uint64", T.UINT64, [2]),
        h.make_tensor_value_info("flags", T.BOOL, ["batch"]),
        h.make_tensor_value_info("words", T.STRING, ["batch"]),
        h.make_tensor_value_info("scale", T.FLOAT, []),
        h.make_tensor_value_info("count", T.INT64, []),
    ]
    outputs = [
        h.make_tensor_value_info("fp16_plus_one", T.FLOAT16, [2, 3]),
        h.make_tensor_value_info("bf16_doubled", T.BFLOAT16, [2]),
        h.make_tensor_value_info("fp64_sqrt", T.DOUBLE, ["batch"]),
        h.make_tensor_value_info("int8_neg", T.INT8, ["batch", 4]),
        h.make_tensor_value_info("int16_abs", T.INT16, [3]),
        h.make_tensor_value_info("uint8_as_int32", T.INT32, ["batch", 4]),
        h.make_tensor_value_info("uint16_same", T.UINT16, [2]),
        h.make_tensor_value_info("uint32_same", T.UINT32, [2]),
        h.make_tensor_value_info("uint64_same", T.UINT64, [2]),
        h.make_tensor_value_info("flags_not", T.BOOL, ["batch"]),
        h.make_tensor_value_info("words_same", T.STRING, ["batch"]),
        h.make_tensor_value_info("total", T.FLOAT, []),
        h.make_tensor_value_info("total_is_big", T.BOOL, []),
    ]
    one = h.make_tensor("one", T.FLOAT, [], [1.0])
    two = h.make_tensor("two", T.FLOAT, [], [2.0])
    ten = h.make_tensor("ten", T.FLOAT, [], [10.0])
    nodes = [
        h.make_node("Cast", ["x_fp16"], ["fp16_as_fp32"], to=T.FLOAT),
        h.make_node("Add", ["fp16_as_fp32", "one"], ["fp16_sum"]),
        h.make_node("Cast", ["fp16_sum"], ["fp16_plus_one"], to=T.FLOAT16),
        h.make_node("Cast", ["x_bf16"], ["bf16_as_fp32"], to=T.FLOAT),
        h.make_node("Mul", ["bf16_as_fp32", "two"], ["bf16_product"]),
        h.make_node("Cast", ["bf16_product"], ["bf16_doubled"], to=T.BFLOAT16),
        h.make_node("Sqrt", ["x_fp64"], ["fp64_sqrt"]),
        h.make_node("Neg", ["x_int8"], ["int8_neg"]),
        h.make_node("Abs", ["x_int16"], ["int16_abs"]),
        h.make_node("Cast", ["x_uint8"], ["uint8_as_int32"], to=T.INT32),
        h.make_node("Identity", ["x_uint16"], ["uint16_same"]),
        h.make_node("Identity", ["x_uint32"], ["uint32_same"]),
        h.make_node("Identity", ["x_uint64"], ["uint64_same"]),
        h.make_node("Not", ["flags"], ["flags_not"]),
        h.make_node("Identity", ["words"], ["words_same"]),
        h.make_node("Cast", ["count"], ["count_fp32"], to=T.FLOAT),
        h.make_node("Mul", ["scale", "count_fp32"], ["total"]),
        h.make_node("Greater", ["total", "ten"], ["total_is_big"]),
    ]
    graph = h.make_graph(nodes, "typed", inputs, outputs, initializer=[one, two, ten])
    model = h.make_model(graph, producer_name="pilotlight hack/gen-typed-model.py",
                         opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    root = args[0] if args else DEFAULT_DIR
    stale = 0
    for rel, build in (("typed/model.onnx", typed), ("unservable/fp16_dynamic.onnx", fp16_dynamic),
                       ("unservable/sequence_output.onnx", sequence_output)):
        out = os.path.join(root, rel)
        data = build()
        if check:
            try:
                with open(out, "rb") as f:
                    committed = f.read()
            except FileNotFoundError:
                committed = b""
            if committed != data:
                print(f"gen-typed-model: {out} is stale; run hack/gen-typed-model.py and commit it", file=sys.stderr)
                stale = 1
            continue
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as f:
            f.write(data)
        print(f"gen-typed-model: {out} ({len(data)} bytes)", file=sys.stderr)
    return stale


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
