"""Makes tiny_ser.onnx, a plumbing fixture for the pluggable speech-emotion contract (NOT a model of
emotion): 16 mean log-mel energies in ([1, 16], input `features`) → softmax over 3 classes
(`predictions`): class 0 follows the low bands, class 1 the high bands, class 2 is constant.
pip install onnx numpy; python make_tiny_ser.py"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

w = np.zeros((16, 3), np.float32)
w[:8, 0] = 0.5     # low bands
w[8:, 1] = 0.5     # high bands
b = np.array([0.0, 0.0, 1.0], np.float32)
graph = helper.make_graph(
    [helper.make_node("MatMul", ["features", "W"], ["xw"]),
     helper.make_node("Add", ["xw", "B"], ["logits"]),
     helper.make_node("Softmax", ["logits"], ["predictions"], axis=-1)],
    "tiny_ser",
    [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 16])],
    [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, [1, 3])],
    [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="kurento-tap fixture")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, "tiny_ser.onnx")
