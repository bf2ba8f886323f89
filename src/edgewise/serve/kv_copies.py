"""A slot's KV rows saved and written back where they live, for the prompt cache on a GPU: onnxruntime runs the
copies itself (a Slice per buffer out; a ScatterND per buffer bound in place, which onnxruntime's CUDA kernel runs
without copying the rest of the buffer), so cached pieces never leave device memory. The buffers are the decoder's
[key, value] pairs of [slots, kv_heads, context, head_size] rows per layer (anything with shape, dtype, device and
ptr(slot)); a saved piece comes back in the same pairs, as the prompt cache keeps it."""
from __future__ import annotations

import numpy as np
import onnx


class _DeviceRows:
    """A saved piece of one KV buffer on the device: an OrtValue [1, heads, tokens, head_size]."""

    def __init__(self, value):
        self.value = value
        self.shape = tuple(value.shape())
        self.nbytes = value.tensor_size_in_bytes()


class KVCopies:
    """Save and load a slot's KV rows where they live, run by onnxruntime itself: a Slice per buffer copies tokens
    start..end of one slot out, a ScatterND per buffer (its output bound to its input: onnxruntime scatters in
    place) writes them back. On a GPU the prompt cache never leaves device memory."""

    def __init__(self, pairs: list, provider: str):
        import onnxruntime as ort
        from onnx import helper

        self.buffers = buffers = [b for pair in pairs for b in pair]
        self.heads, self.context, self.head_size = buffers[0].shape[1:]
        t = helper.np_dtype_to_tensor_dtype(buffers[0].dtype)
        kv = [helper.make_tensor_value_info(f"kv{i}", t, [1, self.heads, self.context, self.head_size])
              for i in range(len(buffers))]
        ints = [helper.make_tensor_value_info(n, onnx.TensorProto.INT64, [1]) for n in ("start", "end", "axis")]
        save = helper.make_graph(
            [helper.make_node("Slice", [f"kv{i}", "start", "end", "axis"], [f"s{i}"]) for i in range(len(buffers))],
            "save", kv + ints, [helper.make_tensor_value_info(f"s{i}", t, None) for i in range(len(buffers))])
        load = helper.make_graph(
            [helper.make_node("ScatterND", [f"kv{i}", "at", f"u{i}"], [f"o{i}"]) for i in range(len(buffers))],
            "load", kv + [helper.make_tensor_value_info("at", onnx.TensorProto.INT64, [self.heads, None, 3])]
            + [helper.make_tensor_value_info(f"u{i}", t, [self.heads, None, self.head_size])
               for i in range(len(buffers))],
            [helper.make_tensor_value_info(f"o{i}", t, None) for i in range(len(buffers))])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # ScatterND's CUDA kernel warns on its default logger, once per node, that repeated indices land in no set
        # order; these indices never repeat
        ort.set_default_logger_severity(3)
        try:
            self.sessions = [ort.InferenceSession(
                helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10).SerializeToString(),
                options, providers=[provider]) for g in (save, load)]
        finally:
            ort.set_default_logger_severity(2)  # onnxruntime's own default

    def check(self) -> None:
        """Raise unless tokens 0-1 of slot 0, written at 2-3, read back byte for byte (the slot holds nothing yet)."""
        saved = self.save(0, 0, 2)
        self.load(0, 2, saved)
        back = self.save(0, 2, 4)
        if any(a.value.numpy().tobytes() != b.value.numpy().tobytes()
               for pair, again in zip(saved, back) for a, b in zip(pair, again)):
            raise RuntimeError("the device's KV copies do not read back what they wrote")

    def _bind_slot(self, io, slot: int, outputs: bool) -> None:
        shape = [1, self.heads, self.context, self.head_size]
        for i, buffer in enumerate(self.buffers):
            io.bind_input(f"kv{i}", buffer.device, 0, buffer.dtype, shape, buffer.ptr(slot))
            if outputs:
                io.bind_output(f"o{i}", buffer.device, 0, buffer.dtype, shape, buffer.ptr(slot))

    def save(self, slot: int, start: int, end: int) -> list[list[_DeviceRows]]:
        io = self.sessions[0].io_binding()
        self._bind_slot(io, slot, outputs=False)
        for name, value in (("start", start), ("end", end), ("axis", 2)):
            io.bind_cpu_input(name, np.array([value], np.int64))
        for i, buffer in enumerate(self.buffers):
            io.bind_output(f"s{i}", buffer.device)
        self.sessions[0].run_with_iobinding(io)
        rows = [_DeviceRows(v) for v in io.get_outputs()]
        return [rows[i:i + 2] for i in range(0, len(rows), 2)]

    def load(self, slot: int, start: int, saved: list[list[_DeviceRows]]) -> None:
        saved = [rows for pair in saved for rows in pair]
        n = saved[0].shape[2]
        at = np.zeros((self.heads, n, 3), np.int64)
        at[..., 1] = np.arange(self.heads)[:, None]
        at[..., 2] = np.arange(start, start + n)[None, :]
        io = self.sessions[1].io_binding()
        self._bind_slot(io, slot, outputs=True)
        io.bind_cpu_input("at", at)
        for i, (buffer, rows) in enumerate(zip(self.buffers, saved)):
            io.bind_input(f"u{i}", buffer.device, 0, buffer.dtype, [self.heads, n, self.head_size],
                          rows.value.data_ptr())
        self.sessions[1].run_with_iobinding(io)
