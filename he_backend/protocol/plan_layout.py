"""The public part of a plan (:class:`PlanLayout`): what a client needs to make keys, pack
inputs and unpack results, without the weights."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..eval.cyclic import periodic
from ..eval.params import CkksParams
from .serialization import PayloadError, pack, unpack

LAYOUT_KIND = "plan layout"


def input_period(packing: str, input_slots: int, block: int) -> int:
    """See :attr:`PlanLayout.input_period`."""
    return 1 << max(0, (input_slots - 1).bit_length()) if packing == "sample" and input_slots <= block else 0


def check_gather(gather: np.ndarray, input_length: int, slots: int) -> None:
    """A replicated input layout read from bytes: at most ``slots`` entries, each an input
    element or -1."""
    if gather.size > slots or (gather.size and (gather.min() < -1 or gather.max() >= input_length)):
        raise ValueError(f"an input layout of {gather.size} slots with elements outside -1..{input_length - 1} "
                         f"(or more than {slots} slots)")



@dataclass(frozen=True)
class PlanLayout:
    """The public part of a plan, what a client needs to make keys, pack inputs and unpack
    results: parameters, rotations, shapes and packing. It carries no weights, so a service
    can hand it to any client without revealing the model. ``input_gather`` (when not empty)
    is the replicated input layout the client packs: slot ``p`` holds input element
    ``input_gather[p]`` (``-1``: zero); it reveals which inputs each output of the first map
    reads (for a convolution, its receptive fields), not the weights."""

    params: CkksParams
    input_shape: tuple[int, ...]
    block: int
    packing: str
    output_length: int
    rotations: tuple[int, ...]
    depth: int
    refreshes: int = 0
    input_gather: tuple[int, ...] = ()

    @property
    def input_length(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def input_slots(self) -> int:
        """Slots one sample's input takes: the gathered layout's, else the flat input's."""
        return len(self.input_gather) or self.input_length

    def pack_input(self, flat: np.ndarray) -> np.ndarray:
        """A flattened sample in its slot layout (the gathered copies, or itself)."""
        if not self.input_gather:
            return flat
        gather = np.asarray(self.input_gather)
        return np.where(gather >= 0, flat[np.maximum(gather, 0)], 0.0)

    @property
    def input_period(self) -> int:
        """With sample packing and the input in one ciphertext, the client repeats the packed
        input every ``input_period`` slots (the power of two at or above its size), which
        periodic maps read with fewer fold rotations (:mod:`he_backend.eval.cyclic`); 0
        otherwise."""
        return input_period(self.packing, self.input_slots, self.block)

    def sample_slots(self, flat: np.ndarray) -> np.ndarray:
        """The slots of a one-ciphertext input of a flattened sample with sample packing: the
        packed input repeated every :attr:`input_period` slots."""
        if not self.input_period:
            raise ValueError("only a sample-packed input in one ciphertext has one slot vector")
        one = np.zeros(self.input_period)
        packed = self.pack_input(flat)
        one[: packed.size] = packed
        return periodic(one, self.params.slots)

    @property
    def samples_per_ciphertext(self) -> int:
        return 1 if self.packing == "sample" else self.params.slots // self.block

    @property
    def input_ciphertexts(self) -> int:
        """Ciphertexts per sample for the input: more than one when it exceeds a block."""
        return -(-self.input_slots // self.block)

    @property
    def output_ciphertexts(self) -> int:
        return -(-self.output_length // self.block)

    def to_bytes(self) -> bytes:
        header = {"params": self.params.to_dict(), "input_shape": list(self.input_shape), "block": self.block,
                  "packing": self.packing, "output_length": self.output_length,
                  "rotations": list(self.rotations), "depth": self.depth, "refreshes": self.refreshes}
        return pack(LAYOUT_KIND, header, [np.asarray(self.input_gather, dtype="<i8").tobytes()])

    @classmethod
    def from_bytes(cls, data: bytes) -> "PlanLayout":
        header, sections = unpack(data, LAYOUT_KIND)
        try:
            gather = np.frombuffer(sections[0], dtype="<i8") if sections else np.zeros(0, dtype=np.int64)
            layout = cls(CkksParams.from_dict(header["params"]), tuple(header["input_shape"]), int(header["block"]),
                         header["packing"], int(header["output_length"]), tuple(header["rotations"]),
                         int(header["depth"]), int(header.get("refreshes", 0)), tuple(gather.tolist()))
            check_gather(gather, layout.input_length, layout.params.slots)
            return layout
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError, RecursionError, MemoryError) as exc:
            raise PayloadError(f"corrupted plan layout: {exc}") from exc
