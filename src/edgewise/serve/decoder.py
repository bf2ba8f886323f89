"""An exported model's decoder run by onnxruntime itself, for serving many requests at once.

One KV cache of `slots` rows is kept in place (past and present are bound to the same memory, the layout the model
builder makes with past_present_share_buffer), one sequence per slot: a prompt is prefilled into its slot alone, and
then the rows decode together, one token each per step, each at its own position. The graph's LoRA inputs
(A [in, rank], B [rank, out]) are loaded here declared [rows, in, rank] and [rows, rank, out], which ONNX MatMul
broadcasts, so every row of a batch multiplies its own adapter: adapters are zero-padded to the largest loaded rank
(zero columns of A meet zero rows of B) and a row without an adapter holds zeros. The weights stay in the model's
own external-data file; nothing is written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log
from edgewise.models.checks import check_adapter, lora_inputs
from edgewise.models.rope import short_rope_only
from edgewise.models.targets import target_of
from edgewise.runtime.genai import adapter_arrays, eos_ids
from edgewise.serve.kv_copies import KVCopies

_EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"
_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
          onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


class _Rows:
    """A [slots, ...] buffer on the session's device, bound to the session one row range at a time. On the CPU the
    numpy array is the buffer; on a GPU `host` (when mirrored) is the copy that sync() uploads."""

    def __init__(self, shape: tuple, dtype, device: str, mirrored: bool = True):
        import onnxruntime as ort

        self.shape, self.dtype, self.device = tuple(shape), np.dtype(dtype), device
        self.host = self.value = None
        if device == "cpu" or mirrored:
            # Committed now: onnxruntime's attention writes a slot's whole cache on its first prompt, and first-touch
            # page faults there cost a newcomer 0.3-0.7 s (measured at 4,096 tokens).
            self.host = np.empty(shape, dtype)
            self.host.fill(0)
        if device != "cpu":
            self.value = (ort.OrtValue.ortvalue_from_numpy(self.host, device, 0) if mirrored else
                          ort.OrtValue.ortvalue_from_shape_and_type(list(shape), self.dtype.type, device, 0))
        self.row_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def sync(self) -> None:
        """Bring the device copy up to date with the host copy."""
        if self.value is not None:
            self.value.update_inplace(self.host)

    def ptr(self, first: int) -> int:
        base = self.host.ctypes.data if self.value is None else self.value.data_ptr()
        return base + first * self.row_bytes

    def bind_input(self, io, name: str, first: int, rows: int) -> None:
        io.bind_input(name, self.device, 0, self.dtype, [rows, *self.shape[1:]], self.ptr(first))


class _Uploads:
    """One slot's rows of many device buffers written from their host copies in one onnxruntime run (an Identity
    per buffer whose output is bound at the row's address): an adapter change uploads that slot, not every slot."""

    def __init__(self, buffers: list[_Rows], provider: str):
        import onnxruntime as ort
        from onnx import helper

        self.buffers = buffers
        types = [helper.np_dtype_to_tensor_dtype(b.dtype) for b in buffers]
        graph = helper.make_graph(
            [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(len(buffers))], "upload",
            [helper.make_tensor_value_info(f"x{i}", t, None) for i, t in enumerate(types)],
            [helper.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate(types)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
        self.session = ort.InferenceSession(model.SerializeToString(), providers=[provider])

    def row(self, slot: int) -> None:
        io = self.session.io_binding()
        for i, buffer in enumerate(self.buffers):
            io.bind_cpu_input(f"x{i}", buffer.host[slot])
            io.bind_output(f"y{i}", buffer.device, 0, buffer.dtype, list(buffer.shape[1:]), buffer.ptr(slot))
        self.session.run_with_iobinding(io)


def _batch_major(graph) -> None:
    """LoRA inputs (and their empty defaults) get a leading row dimension."""
    for value in graph.input:
        if value.name.endswith((".lora_A", ".lora_B")):
            value.type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_param="lora_rows"))
    for init in graph.initializer:
        if init.name.endswith((".lora_A", ".lora_B")):
            init.dims.insert(0, 1)


def _last_position_only(graph, logits: str) -> None:
    """The head multiplies only the last position's hidden state: a prompt's logits are [1, 1, vocab], not one row
    per prompt token (for a 49k vocabulary the head over every prompt position costs more than the layers)."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(logits)
    while node is not None and node.op_type not in ("MatMul", "MatMulNBits", "Gemm"):
        node = producers.get(node.input[0])
    if node is None:
        return
    last = f"{node.input[0]}/last_position"
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array([v], np.int64), f"{last}/{k}")
                              for k, v in (("starts", -1), ("ends", np.iinfo(np.int64).max), ("axes", 1))])
    slice_node = onnx.helper.make_node("Slice", [node.input[0], f"{last}/starts", f"{last}/ends", f"{last}/axes"],
                                       [last], name=f"{last}/Slice")
    graph.node.insert(list(graph.node).index(node), slice_node)
    node.input[0] = last
    for out in graph.output:
        if out.name == logits:
            out.type.tensor_type.shape.dim[1].Clear()
            out.type.tensor_type.shape.dim[1].dim_value = 1


def _types(graph) -> dict[str, np.dtype]:
    return {v.name: _NUMPY.get(v.type.tensor_type.elem_type) for v in (*graph.input, *graph.output)}


class SlotDecoder:
    """prefill(slot, ids) and decode(tokens, lengths) over a fixed number of sequence slots, adapters per slot."""

    # Prompts are prefilled in pieces of this many tokens (after the chat template's head), always the same pieces:
    # the prompt cache keeps them; 64 tokens a run prefill as fast as 512 on the CPU (measured)
    prefill_chunk = 64

    def __init__(self, model_dir: str | Path, adapters: dict[str, str | Path], slots: int,
                 context: int | None = None, graphs: bool = True):
        self.model_dir = model_dir = Path(model_dir)
        config = json.loads((model_dir / "genai_config.json").read_text())
        decoder = config["model"]["decoder"]
        self.layers, self.kv_heads, self.head_size = (decoder[k] for k in (
            "num_hidden_layers", "num_key_value_heads", "head_size"))
        self.context = min(context or config["model"]["context_length"], config["model"]["context_length"])
        self.slots = slots
        self.target = target_of(config)
        if not self.target.slot_engine:
            raise EdgewiseError(f"the slot decoder runs CPU and CUDA models, not {self.target.provider}'s")
        self.device = self.target.device  # where the cache and the bound inputs live: "cpu" or "cuda"
        self.names = decoder["inputs"] | decoder["outputs"]
        graph_model = onnx.load(model_dir / decoder["filename"], load_external_data=False)
        self.types = _types(graph_model.graph)
        self.lora = lora_inputs(graph_model.graph)
        self.adapters = {name: self._read_adapter(Path(path)) for name, path in adapters.items()}
        _batch_major(graph_model.graph)
        _last_position_only(graph_model.graph, self.names["logits"])
        # CUDA graphs: each decode batch size is captured once and replayed, every input at a fixed address
        self.graphs = self.target.cuda_graphs and graphs and short_rope_only(graph_model.graph, self.context)
        self.session = self._session(graph_model, decoder.get("session_options", {}))
        kv_shape = (slots, self.kv_heads, self.context, self.head_size)
        kv_type = self.types[self.names["past_key_names"] % 0]
        try:
            self.kv = [[_Rows(kv_shape, kv_type, self.device, mirrored=False) for _ in range(2)]
                       for _ in range(self.layers)]
        except (MemoryError, RuntimeError) as exc:  # numpy's MemoryError; onnxruntime's failed device allocation
            size = 2 * self.layers * np.prod(kv_shape) * np.dtype(kv_type).itemsize / 2**30
            raise EdgewiseError(f"cannot allocate the KV cache ({size:.1f} GiB for {slots} slots of {self.context} "
                                "tokens): lower --max_batch or --max_context") from exc
        self.lora_rows = self._lora_buffers()
        self._copies, self.can_save = None, True  # save() and load(): numpy copies on the CPU
        if self.device != "cpu":
            try:
                self._copies = KVCopies(self.kv, self.target.provider)
                self._copies.check()
            except Exception as exc:  # noqa: BLE001 - serving goes on, every prompt computed
                log.warning("no prompt cache on %s: %s", self.device, str(exc).splitlines()[0])
                self.can_save = False
        self._uploads = (_Uploads(list(self.lora_rows.values()), self.target.provider)
                         if self.lora_rows and self.device != "cpu" else None)
        self.slot_adapter: list[str | None] = [None] * slots
        self.vocab = int(config["model"]["vocab_size"])
        self.eos = eos_ids(config)
        self.logits = np.zeros((slots, 1, self.vocab), self.types[self.names["logits"]])
        self._bindings: dict = {}
        self._no_graph = self._prompt_options()
        self.step_inputs = {key: _Rows((slots, self.context if key == "attention_mask" else 1),
                                       self.types[self.names[key]], self.device)
                            for key in ("input_ids", "attention_mask", "position_ids")
                            if self.graphs and self.names.get(key)}

    @property
    def cache_bytes(self) -> int:
        return sum(b.nbytes for pair in self.kv for b in pair) + sum(b.nbytes for b in self.lora_rows.values())

    # --- loading ---------------------------------------------------------------------------------------------------

    def _read_adapter(self, path: Path) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise EdgewiseError(f"adapter file not found: {path}")
        check_adapter(path, self.lora)
        return adapter_arrays(path)

    def _session(self, graph_model, options: dict):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if options.get("intra_op_num_threads"):
            so.intra_op_num_threads = int(options["intra_op_num_threads"])
        so.add_session_config_entry(_EXTERNAL_FOLDER, str(self.model_dir))
        provider, key = self.target.provider, self.target.genai_key
        if key is None:
            providers = [provider]
        else:
            if provider not in ort.get_available_providers():
                raise EdgewiseError(f"{self.model_dir} is built for {provider}, which this machine's onnxruntime "
                                    f"cannot run; it runs with {self.target.runtime}")
            own = next((e[key] for e in options.get("provider_options", []) if key in e), {})
            if self.graphs:
                try:
                    return ort.InferenceSession(graph_model.SerializeToString(), so, providers=[
                        (provider, {**own, "enable_cuda_graph": "1"}), "CPUExecutionProvider"])
                except Exception as exc:  # noqa: BLE001 - onnxruntime refuses graphs for some graphs: run without
                    log.warning("CUDA graphs are off for %s: %s", self.model_dir, str(exc).splitlines()[0])
                    self.graphs = False
            providers = [(provider, own), "CPUExecutionProvider"]
        try:
            return ort.InferenceSession(graph_model.SerializeToString(), so, providers=providers)
        except Exception as exc:  # onnxruntime's text names the damaged file or node
            raise EdgewiseError(f"cannot load the model in {self.model_dir}: {str(exc).splitlines()[0]}") from exc

    def _lora_buffers(self) -> dict[str, _Rows]:
        if not self.adapters:
            return {}
        rank = max(t.shape[1] for a in self.adapters.values() for n, t in a.items() if n.endswith(".lora_A"))
        buffers = {}
        for name, (dtype, dims) in self.lora.items():
            shape = (self.slots, dims[0], rank) if name.endswith(".lora_A") else (self.slots, rank, dims[1])
            buffers[name] = _Rows(shape, np.float16 if dtype == "float16" else np.float32, self.device)
        return buffers

    # --- slots -----------------------------------------------------------------------------------------------------

    def assign(self, slot: int, adapter: str | None) -> None:
        """The slot's rows of every LoRA input take this adapter's weights (zeros where it has none)."""
        if adapter is not None and adapter not in self.adapters:
            raise EdgewiseError(f"unknown adapter '{adapter}' (loaded: {', '.join(self.adapters) or 'none'})")
        if self.slot_adapter[slot] == adapter:
            return
        weights = self.adapters.get(adapter, {})
        for name, rows in self.lora_rows.items():
            row = rows.host[slot]
            row[...] = 0
            if name in weights:
                w = weights[name]
                row[:w.shape[0], :w.shape[1]] = w
        if self._uploads:
            self._uploads.row(slot)
        self.slot_adapter[slot] = adapter

    def prefill(self, slot: int, ids: list[int], start: int = 0) -> np.ndarray:
        """Run `ids` into the slot's cache after its first `start` tokens; the logits of the last one [vocab]."""
        n = len(ids)
        if start + n > self.context:
            raise EdgewiseError(f"{start + n} tokens do not fit this server's context of {self.context}")
        io = self.session.io_binding()
        self._bind_state(io, slot, 1)
        io.bind_output(self.names["logits"], "cpu")
        self._run(io, np.array([ids]), np.ones((1, start + n)), np.arange(start, start + n)[None], self._no_graph)
        return io.get_outputs()[-1].numpy()[0, -1]  # [1, 1, vocab]: the head sees the last position only

    def save(self, slot: int, start: int, end: int) -> list:
        """A copy of the slot's cache for its tokens start..end-1, on the cache's device: per layer [key, value]."""
        if self._copies is not None:
            return self._copies.save(slot, start, end)
        return [[b.host[slot, :, start:end].copy() for b in pair] for pair in self.kv]

    def load(self, slot: int, start: int, saved: list) -> None:
        """Put saved cache rows back into a slot from token `start`."""
        if self._copies is not None:
            self._copies.load(slot, start, saved)
            return
        for pair, copies in zip(self.kv, saved):
            for buffer, copy in zip(pair, copies):
                buffer.host[slot, :, start:start + copy.shape[1]] = copy

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One step for slots 0..len(tokens)-1: token r goes in at position lengths[r]; logits [rows, vocab]."""
        rows = len(tokens)
        if self.graphs:
            return self._decode_graph(tokens, lengths)
        with_lora = any(self.slot_adapter[:rows]) and bool(self.lora_rows)
        io = self._bindings.get((rows, with_lora))
        if io is None:
            io = self._bindings[(rows, with_lora)] = self.session.io_binding()
            self._bind_state(io, 0, rows, with_lora)
            io.bind_output(self.names["logits"], "cpu", 0, self.logits.dtype, [rows, 1, self.vocab],
                           self.logits.ctypes.data)
        mask = np.arange(int(lengths.max()) + 1)[None, :] <= lengths[:, None]
        self._run(io, tokens[:, None], mask, lengths[:, None])
        return self.logits[:rows, 0]

    def _decode_graph(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """decode() as a replay of the CUDA graph for this many rows: inputs are written into fixed device buffers,
        the mask spans the whole context (its sum, not its width, gives each row's length)."""
        rows = len(tokens)
        with_lora = bool(self.lora_rows) and any(self.slot_adapter[:rows])  # else the empty defaults: no LoRA work
        if (rows, with_lora) not in self._bindings:
            self._bindings[(rows, with_lora)] = self._graph_binding(rows, with_lora)
        io, logits, options = self._bindings[(rows, with_lora)]
        feeds = {"input_ids": tokens[:, None], "position_ids": lengths[:, None],
                 "attention_mask": np.arange(self.context)[None, :] <= lengths[:, None]}
        for key, buffer in self.step_inputs.items():
            buffer.host[:rows] = feeds[key]
            buffer.sync()
        self.session.run_with_iobinding(io, options)
        return logits.numpy()[:, 0]

    def _graph_binding(self, rows: int, with_lora: bool):
        import onnxruntime as ort

        io = self.session.io_binding()
        self._bind_state(io, 0, rows, with_lora)
        for key, buffer in self.step_inputs.items():
            buffer.bind_input(io, self.names[key], 0, rows)
        logits = ort.OrtValue.ortvalue_from_shape_and_type([rows, 1, self.vocab], self.logits.dtype.type, self.device,
                                                           0)
        io.bind_ortvalue_output(self.names["logits"], logits)
        options = ort.RunOptions()
        # one graph per batch size, with and without LoRA work; 0 is onnxruntime's own
        options.add_run_config_entry("gpu_graph_id", str(2 * rows + with_lora))
        return io, logits, options

    def _prompt_options(self):
        """Run options that keep a prompt's run (its length varies) out of graph capture and replay."""
        import onnxruntime as ort

        if not self.graphs:
            return None
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", "-1")
        return options

    # --- binding ---------------------------------------------------------------------------------------------------

    def _bind_state(self, io, first: int, rows: int, with_lora: bool | None = None) -> None:
        shape = [rows, self.kv_heads, self.context, self.head_size]
        for layer, pair in enumerate(self.kv):
            for kind, buffer in zip(("key", "value"), pair):
                ptr = buffer.ptr(first)
                past, present = self.names[f"past_{kind}_names"] % layer, self.names[f"present_{kind}_names"] % layer
                io.bind_input(past, self.device, 0, buffer.dtype, shape, ptr)
                io.bind_output(present, self.device, 0, buffer.dtype, shape, ptr)
        if with_lora is None:
            with_lora = self.slot_adapter[first] is not None
        if with_lora:
            self._bind_lora(io, first, rows)

    def _bind_lora(self, io, first: int, rows: int) -> None:
        for name, buffer in self.lora_rows.items():
            buffer.bind_input(io, name, first, rows)

    def _run(self, io, ids, mask, positions, options=None) -> None:
        """Bind this step's inputs (kept referenced until the run returns: the binding aliases them) and run."""
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        arrays = []
        for key, array in feeds.items():
            name = self.names.get(key)
            if name:
                arrays.append(np.ascontiguousarray(array, self.types[name]))
                io.bind_cpu_input(name, arrays[-1])
        self.session.run_with_iobinding(io, options)
