"""Many numpy ``Generator(PCG64)`` streams as arrays: the same draws, all at once.

``ToolMachineVectorEnv`` must draw exactly what N ``ToolMachineEnv``s draw, each
from its own ``np.random.Generator(PCG64(seed + i))``. Calling N generators is a
Python loop; this module does their arithmetic on arrays instead:

* PCG64 (numpy's default bit generator, PCG XSL-RR 128/64): a 128-bit LCG
  ``s <- A*s + inc`` whose output is ``rotr64(hi(s) ^ lo(s), hi(s) >> 58)``
  taken *after* each step. A 128-bit state is two ``uint64`` arrays. Jumping
  ``k`` steps is again affine, ``s_k = A^k*s + C_k`` with ``C_k = inc*(A^(k-1)+...+1)``,
  so ``peek`` gets the next ``LOOKAHEAD`` outputs of every stream in one pass.
* ``Generator.random()`` is one output: ``(x >> 11) * 2**-53``.
* ``Generator.integers(0, n)`` for ``2 <= n < 2**32`` is Lemire's method on 32-bit
  words, which the bit generator hands out from a one-word buffer (``has_uint32``,
  ``uinteger`` in its state): the low half of an output first, its high half at the
  next request. Lemire rejects a word with probability ``(2**32 % n) / 2**32``
  (1.4e-9 for n = 10); ``lemire`` reports those rows, and callers redo them with a
  real ``Generator`` (``generator``/``store``), which is exact by construction.

Correctness is checked against numpy itself (``tests/test_vector_env.py``): the
stream states after a run equal the generators' ``bit_generator.state``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PCG64Streams", "lemire", "take_uint32", "to_double"]

_MASK64 = (1 << 64) - 1
_MASK128 = (1 << 128) - 1
#: PCG64's multiplier (numpy's ``PCG_DEFAULT_MULTIPLIER_128``).
_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
_U32 = np.uint64(0xFFFFFFFF)
_32, _11, _58, _63 = np.uint64(32), np.uint64(11), np.uint64(58), np.uint64(63)


def _split(values) -> tuple[np.ndarray, np.ndarray]:
    """128-bit Python ints -> (high, low) ``uint64`` arrays."""
    return (np.array([v >> 64 for v in values], dtype=np.uint64),
            np.array([v & _MASK64 for v in values], dtype=np.uint64))


def _mul_wide(a: np.ndarray, b_lo32: np.ndarray, b_hi32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full 128-bit product of ``uint64`` arrays ``a`` and ``b`` (given as 32-bit halves)."""
    a0, a1 = a & _U32, a >> _32
    p00, p01, p10, p11 = a0 * b_lo32, a0 * b_hi32, a1 * b_lo32, a1 * b_hi32
    mid = (p00 >> _32) + (p01 & _U32) + (p10 & _U32)
    return p11 + (p01 >> _32) + (p10 >> _32) + (mid >> _32), (mid << _32) | (p00 & _U32)


def to_double(x: np.ndarray) -> np.ndarray:
    """``Generator.random()`` from one PCG64 output each."""
    return (x >> _11).astype(np.float64) * (1.0 / 9007199254740992.0)


def take_uint32(outputs: np.ndarray, start: np.ndarray, has: np.ndarray, buf: np.ndarray, count: np.ndarray,
                max_count: int):
    """The 32-bit words the bit generator hands out for ``count`` requests per row.

    Args:
        outputs: ``[k, L]`` upcoming 64-bit outputs of each stream.
        start: per row, the first output not used yet.
        has, buf: the streams' one-word buffers (``has_uint32``, ``uinteger``).
        count: per row, how many words are wanted (1..max_count).

    Returns ``(words [k, max_count], outputs_used, has_after, buf_after)``; a row's
    words past its ``count`` are meaningless.
    """
    k = len(outputs)
    rows = np.arange(k)[:, None]
    n_out = (max_count + 2) // 2
    nxt = outputs[rows, start[:, None] + np.arange(n_out)]  # needs start + n_out <= L
    stream = np.empty((k, 1 + 2 * n_out), dtype=np.uint64)  # buffer, then low, high of each output
    stream[:, 0] = buf
    stream[:, 1::2] = nxt & _U32
    stream[:, 2::2] = nxt >> _32
    has = has.astype(np.int64)
    first = 1 - has
    words = stream[rows, first[:, None] + np.arange(max_count)]
    used = (count - has + 1) // 2
    has_after = (has + 2 * used - count).astype(bool)
    # numpy leaves the last high half in the buffer even once it is handed out.
    buf_after = np.where(used > 0, stream[rows[:, 0], 2 * used], buf)
    return words, used, has_after, buf_after


def lemire(words: np.ndarray, bound: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Generator.integers(0, bound)`` from the first ``count`` 32-bit words of each row
    (``bound`` in 2..2**32-1, one per row): ``(values [k, words], rejected [k])``.
    A rejected row needs more words than it was given: redo it with a real ``Generator``."""
    bound = bound.astype(np.uint64)[:, None]
    m = words * bound
    low = (m & _U32) < (np.uint64(1 << 32) - bound) % bound
    rejected = (low & (np.arange(words.shape[1]) < count[:, None])).any(axis=1)
    return (m >> _32).astype(np.int64), rejected


class PCG64Streams:
    """``n`` PCG64 streams (state, increment, 32-bit buffer) as arrays."""

    #: How many outputs ``peek`` returns.
    LOOKAHEAD = 5

    def __init__(self, n: int):
        self.state_hi = np.zeros(n, dtype=np.uint64)
        self.state_lo = np.zeros(n, dtype=np.uint64)
        self.has32 = np.zeros(n, dtype=bool)
        self.buf32 = np.zeros(n, dtype=np.uint64)
        self.seeded = np.zeros(n, dtype=bool)
        # The jumps: s_k = A^k * s + C_k for k = 1..LOOKAHEAD.
        powers = [pow(_MULTIPLIER, k, 1 << 128) for k in range(1, self.LOOKAHEAD + 1)]
        self._sums = [sum(pow(_MULTIPLIER, j, 1 << 128) for j in range(k)) & _MASK128
                      for k in range(1, self.LOOKAHEAD + 1)]
        self._a_hi, a_lo = _split(powers)
        self._a_lo32, self._a_hi32 = a_lo & _U32, a_lo >> _32
        self._a_lo = a_lo
        self._c_hi = np.zeros((n, self.LOOKAHEAD), dtype=np.uint64)
        self._c_lo = np.zeros((n, self.LOOKAHEAD), dtype=np.uint64)
        self._inc = [0] * n

    def store(self, i: int, generator: np.random.Generator) -> None:
        """Stream ``i`` continues where ``generator`` (a PCG64 one) stands."""
        state = generator.bit_generator.state
        if state["bit_generator"] != "PCG64":
            raise ValueError(f"need a PCG64 generator, got {state['bit_generator']}")
        value, inc = state["state"]["state"], state["state"]["inc"]
        self.state_hi[i], self.state_lo[i] = value >> 64, value & _MASK64
        self.has32[i], self.buf32[i] = bool(state["has_uint32"]), state["uinteger"]
        if inc != self._inc[i]:
            self._inc[i] = inc
            self._c_hi[i], self._c_lo[i] = _split([(inc * s) & _MASK128 for s in self._sums])
        self.seeded[i] = True

    def generator(self, i: int) -> np.random.Generator:
        """A new ``Generator`` standing where stream ``i`` stands (a copy: drawing from
        it does not move the stream; ``store`` it back to do so)."""
        bit_generator = np.random.PCG64(0)
        bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": (int(self.state_hi[i]) << 64) | int(self.state_lo[i]), "inc": self._inc[i]},
            "has_uint32": int(self.has32[i]),
            "uinteger": int(self.buf32[i]),
        }
        return np.random.Generator(bit_generator)

    def peek(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next ``LOOKAHEAD`` outputs of streams ``idx`` and the states after each,
        ``[k, LOOKAHEAD]`` each, without moving the streams."""
        hi, lo = self.state_hi[idx, None], self.state_lo[idx, None]
        prod_hi, prod_lo = _mul_wide(lo, self._a_lo32, self._a_hi32)
        prod_hi = prod_hi + hi * self._a_lo + lo * self._a_hi
        new_lo = prod_lo + self._c_lo[idx]
        new_hi = prod_hi + self._c_hi[idx] + (new_lo < prod_lo)
        x, rot = new_hi ^ new_lo, new_hi >> _58
        out = (x >> rot) | (x << ((np.uint64(64) - rot) & _63))
        return out, new_hi, new_lo

    def commit(self, idx: np.ndarray, state_hi: np.ndarray, state_lo: np.ndarray, has32: np.ndarray,
               buf32: np.ndarray) -> None:
        self.state_hi[idx] = state_hi
        self.state_lo[idx] = state_lo
        self.has32[idx] = has32
        self.buf32[idx] = buf32
